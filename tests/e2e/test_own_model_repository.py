"""An edge with a hub and no ``--models`` keeps the hub's rollouts in its data dir: a real hub and
a real ``nexus edge serve``; the package's shipped bundles, shared by every edge on the host, stay
byte for byte and mtime for mtime as they were."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from hub.client import OperatorClient
from models.bundle import DEFAULT_REPOSITORY, SIGNATURE, read_manifest, verify_bundle, write_manifest
from nexus_tools.processes import free_port
from tests.support.processes import NEXUS, EdgeProcess, HubProcess, wait_for


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _next_version(tmp: Path) -> Path:
    """The shipped funnel bundle with a changed output bias, as version 2."""
    new = tmp / "funnel-next"
    shutil.copytree(DEFAULT_REPOSITORY / "funnel" / "1", new)
    (new / SIGNATURE).unlink(missing_ok=True)
    model = onnx.load(new / "model.onnx")
    bias = model.graph.initializer[-1]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, bias.name))
    onnx.save(model, new / "model.onnx")
    body = {k: v for k, v in read_manifest(new).items() if k not in ("files", "format")}
    write_manifest(new, {**body, "version": "2", "parent_version": "1"})
    return new


class DefaultModelsEdge(EdgeProcess):
    """``nexus edge serve --hub`` without ``--models``."""

    def start(self, token: str | None) -> None:
        args = [*NEXUS, "edge", "serve", "--data-dir", str(self.root / "data"), "--port", str(self.port)]
        args += ["--hub", self.hub_url, "--no-supernode", "--log-level", "warning", f"--enroll-token={token}"]
        env = {**os.environ, "NEXUS_MODELS": self.models}
        env.pop("NEXUS_MODELS_DIR", None)
        with open(self.root / "edge.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[HubProcess, OperatorClient]]:
    process = HubProcess(tmp_path / "hub", free_port(), "--no-superlink", "--poll-interval", "0.5")
    admin = OperatorClient(process.url, (tmp_path / "hub" / "admin.token").read_text().strip())
    try:
        yield process, admin
    finally:
        admin.close()
        process.stop()


@pytest.mark.slow
def test_rollouts_land_in_the_data_dir_never_in_the_package(tmp_path: Path, hub) -> None:
    process, admin = hub
    before = _snapshot(DEFAULT_REPOSITORY)
    admin.promote("funnel", admin.push(DEFAULT_REPOSITORY / "funnel" / "1")["version"], "stable")
    edge = DefaultModelsEdge(tmp_path / "edge", process.url, admin.create_token({})["token"])
    try:
        own = tmp_path / "edge" / "data" / "models"
        # the seeded copy serves at once, and takes the hub's signature of the shipped version
        wait_for(lambda: (own / "funnel" / "1" / SIGNATURE).is_file(), timeout=60, what="the hub's version 1 adopted")
        version = admin.push(_next_version(tmp_path))["version"]
        admin.promote("funnel", version, "stable")
        wait_for(lambda: edge.served() == version, timeout=60, what=f"the edge serving version {version}")
        verify_bundle(own / "funnel" / version)
        assert sorted(p.name for p in (own / "funnel").iterdir()) == sorted({"1", version})
    finally:
        edge.stop()
    assert _snapshot(DEFAULT_REPOSITORY) == before, "the edge wrote into the package's shipped bundles"
