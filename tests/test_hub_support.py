"""Helpers shared by the hub and sync tests (no tests here)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hub.app import create_app
from hub.client import OperatorClient
from hub.server import ServerThread
from hub.settings import HubSettings
from hub.store.base import Store, open_store
from hub.store.redis import RedisStore
from models.bundle import write_manifest
from models.flower_process import end_process_tree


def make_bundle(
    root: Path, name: str = "funnel", version: str = "1", payload: bytes = b"weights-v1", size: int = 0
) -> Path:
    """A minimal valid bundle dir (the hub never loads the artifacts, only checks them)."""
    folder = root / f"{name}-{version}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(payload + b"\0" * size)
    write_manifest(
        folder,
        {"name": name, "family": "funnel", "version": version, "parent_version": None, "metrics": {"roc_auc": 0.9}},
    )
    return folder


def store_for(kind: str, tmp_path: Path, redis_url: str | None) -> Store:
    if kind == "sqlite":
        return open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    assert redis_url is not None
    return open_store(f"{redis_url}?prefix=test:{uuid.uuid4().hex[:8]}:")


def cleanup(store: Store) -> None:
    if isinstance(store, RedisStore):
        store.delete_all()
    store.close()


def admin(server: ServerThread, data_dir: Path) -> OperatorClient:
    return OperatorClient(server.url, (data_dir / "admin.token").read_text().strip())


class RunningHub:
    def __init__(self, data_dir: Path, store: Store, **settings: object) -> None:
        self.data_dir = data_dir
        self.store = store
        self.settings = HubSettings(data_dir=data_dir, **settings)
        self.server = ServerThread(create_app(self.settings, store)).start()
        self.url = self.server.url
        self.admin = admin(self.server, data_dir)
        self.http = httpx.Client(base_url=self.url)  # one client: building one per call costs ~50 ms

    def stop(self) -> None:
        self.http.close()
        self.admin.close()
        self.server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def any_store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    redis_url = request.getfixturevalue("redis_url") if store_kind == "redis" else None
    store = store_for(store_kind, tmp_path, redis_url)
    yield store
    cleanup(store)


class StandInRepository:
    """Stands in for the edge's model repository: serves exactly what it is told to,
    after checking that the version is really installed and intact."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.served: dict[str, str] = {}
        self.activations: list[tuple[str, str]] = []

    def activate(self, model: str, version: str) -> None:
        from models.bundle import verify_bundle

        verify_bundle(self.root / model / version)
        self.served[model] = version
        self.activations.append((model, version))

    def status(self) -> NodeStatus:
        from edge_worker.sync import NodeStatus

        return NodeStatus(models=dict(self.served))


NEXUS = [sys.executable, "-m", "nexus_cli"]


def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


class HubProcess:
    """``nexus hub serve`` as a real child process."""

    def __init__(self, data_dir: Path, port: int, *extra: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.log = data_dir.parent / f"hub-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*NEXUS, "hub", "serve", "--data-dir", str(data_dir), "--port", str(port), *extra],
                stdout=log,
                stderr=log,
            )
        wait_for(lambda: _healthy(self.url) or self.proc.poll() is not None, timeout=30, what="hub start")
        assert self.proc.poll() is None, self.log.read_text()

    def kill(self) -> None:
        """SIGKILL, as a crash would: a SuperLink it started outlives it (the next hub adopts it)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """End the hub (SIGTERM stops its SuperLink) and any SuperLink a killed hub left behind."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            pid = int((self.data_dir / "flower" / "superlink.pid").read_text())
            if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes():  # pids get reused
                end_process_tree(pid, kill=True)
        except (OSError, ValueError):
            pass
