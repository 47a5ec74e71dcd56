"""Hostile bundles against a real hub process: a sparse tar that would expand far past the
upload limit, and many clients downloading a large bundle at once (the hub must stream it
from the store, not hold the archive in memory per request)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from hub.client import OperatorClient
from models.bundle import write_manifest
from nexus_tools.processes import free_port
from nexus_wire.datadir import HubDataDir
from tests.support.processes import HubProcess

MB = 1 << 20


def _hub(tmp_path: Path, *extra: str) -> tuple[HubProcess, OperatorClient]:
    hub = HubProcess(tmp_path / "hub", free_port(), "--no-superlink", *extra)
    token = HubDataDir(hub.data_dir).admin_token.read_text().strip()
    return hub, OperatorClient(hub.url, token, timeout=60.0)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_member_is_refused_naming_the_limit(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    with open(folder / "model.onnx", "wb") as fh:
        fh.truncate(200 * MB)  # a hole: a few KB in a sparse tar, 200 MB once extracted
    write_manifest(folder, {"name": "funnel", "family": "funnel", "version": "1", "parent_version": None})
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", str(archive), "-C", str(folder), "manifest.json", "model.onnx"],
        check=True,
    )
    assert archive.stat().st_size < 64 << 10
    hub, admin = _hub(tmp_path)
    try:
        reply = httpx.post(
            hub.url + "/v1/models",
            content=archive.read_bytes(),
            headers={"Authorization": admin._http.headers["Authorization"]},
            timeout=60.0,
        )
        assert reply.status_code == 422, reply.text
        assert "sparse" in reply.json()["error"]
        assert admin.models() == []
    finally:
        admin.close()
        hub.stop()


@pytest.mark.slow
def test_concurrent_downloads_of_a_large_bundle_stay_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    with open(folder / "model.onnx", "wb") as fh:
        for _ in range(100):
            fh.write(os.urandom(MB))
    write_manifest(folder, {"name": "funnel", "family": "funnel", "version": "1", "parent_version": None})
    size = (folder / "model.onnx").stat().st_size
    hub, admin = _hub(tmp_path, "--max-upload-bytes", str(200 * MB))
    try:
        admin.push(folder)
        idle = _rss(hub.proc.pid)
        peak, got, slowest = idle, [0] * 4, 0.0
        auth = admin._http.headers["Authorization"]

        def fetch(i: int) -> None:
            url = hub.url + "/v1/models/funnel/versions/1/files/model.onnx"
            with httpx.stream("GET", url, headers={"Authorization": auth}, timeout=60.0) as r:
                assert r.status_code == 200 and int(r.headers["content-length"]) == size
                for chunk in r.iter_bytes(MB):
                    got[i] += len(chunk)
                    time.sleep(0.002)  # a client slower than the hub's disk

        clients = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
        for t in clients:
            t.start()
        with httpx.Client(base_url=hub.url, timeout=5.0) as probe:  # one client: building one costs ~50 ms
            while any(t.is_alive() for t in clients):
                peak = max(peak, _rss(hub.proc.pid))
                start = time.monotonic()
                assert probe.get("/healthz").status_code == 200
                slowest = max(slowest, time.monotonic() - start)
                time.sleep(0.05)
        print(f"hub RSS idle {idle / MB:.0f} MB, peak {peak / MB:.0f} MB, slowest /healthz {slowest:.3f} s")
        assert got == [size] * 4
        assert peak - idle < 150 * MB, f"hub RSS grew {(peak - idle) / MB:.0f} MB serving 4 x {size / MB:.0f} MB"
        assert slowest < 0.5
    finally:
        admin.close()
        hub.stop()
