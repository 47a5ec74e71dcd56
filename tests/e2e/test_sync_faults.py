"""Faults with real processes: the hub killed mid-download, Redis restarted under a hub."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hub.client import OperatorClient
from hub.store import open_store
from nexus_tools.processes import free_port
from nexus_wire.datadir import EdgeDataDir
from tests.support.edge import StandInRepository, sync_agent
from tests.support.env import need, port_open
from tests.support.hub import RunningHub, make_bundle
from tests.support.processes import HubProcess, wait_for


class StallingProxy:
    """A TCP relay that stops forwarding a response after ``stall_after`` bytes and waits
    (so the client is provably mid-download), then drops the connection when released."""

    def __init__(self, upstream_port: int, stall_after: int) -> None:
        self.upstream_port = upstream_port
        self.stall_after = stall_after
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if downstream and not self.release.is_set() and sent + len(data) > self.stall_after:
                    dst.sendall(data[: self.stall_after - sent])
                    self.stalled.set()
                    self.release.wait(30)
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.release.set()
        self._listener.close()


@pytest.mark.slow
def test_hub_killed_mid_download_edge_keeps_serving_and_finishes_later(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "hub", free_port()
    hub = HubProcess(data_dir, port, "--no-superlink")
    try:
        admin = OperatorClient(hub.url, (data_dir / "admin.token").read_text().strip())
        admin.push(make_bundle(tmp_path, "funnel", "1", b"v1"))
        admin.promote("funnel", "1", "stable")
        token = admin.create_token({"region": "1"})["token"]
        edge, repo = tmp_path / "edge", StandInRepository(tmp_path / "edge" / "models")
        asyncio.run(sync_agent(hub.url, edge, repo, token).sync_once())
        assert repo.served == {"funnel": "1"}

        big = 4 << 20
        admin.push(make_bundle(tmp_path, "funnel", "2", b"v2", size=big))
        admin.promote("funnel", "2", "stable")
        admin.close()
        proxy = StallingProxy(port, stall_after=big // 4)
        agent = sync_agent(f"http://127.0.0.1:{proxy.port}", edge, repo)
        outcome: dict[str, object] = {}

        def sync() -> None:
            try:
                outcome["result"] = asyncio.run(agent.sync_once())
            except Exception as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=sync)
        worker.start()
        assert proxy.stalled.wait(20), "the download never started"
        hub.kill()
        proxy.release.set()
        worker.join(20)
        assert "HubUnreachable" in type(outcome.get("error")).__name__, outcome
        assert repo.served == {"funnel": "1"}  # the old model keeps serving
        staged = list(EdgeDataDir(edge).staging.iterdir())
        assert len(staged) == 1 and (staged[0] / "manifest.json").is_file() and not (staged[0] / "model.onnx").exists()
        proxy.close()

        hub = HubProcess(data_dir, port, "--no-superlink")  # same data dir, same port: the hub comes back
        assert asyncio.run(sync_agent(hub.url, edge, repo).sync_once()) == {"funnel": "2"}
        assert repo.served == {"funnel": "2"} and not list(EdgeDataDir(edge).staging.iterdir())
    finally:
        hub.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """A private redis-server with an fsync-always AOF, restartable by the test (never 6379)."""
    need(
        subprocess.run(["which", "redis-server"], capture_output=True).returncode == 0, "redis-server is not installed"
    )
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(workdir),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: port_open("127.0.0.1", port, 0.2), what="redis start")

    def kill() -> None:
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(10)

    start()
    yield port, start, kill
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


@pytest.mark.slow
def test_redis_restarted_under_a_running_hub(own_redis, tmp_path: Path) -> None:
    port, start_redis, kill_redis = own_redis
    hub = RunningHub(tmp_path / "hub", open_store(f"redis://127.0.0.1:{port}/0"))
    try:
        hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"v1"))
        hub.admin.push(make_bundle(tmp_path, "funnel", "2", b"v2"))
        hub.admin.promote("funnel", "1", "stable")
        hub.admin.assign("funnel", "2", {"region": "2"})
        edge, repo = tmp_path / "edge", StandInRepository(tmp_path / "edge" / "models")
        asyncio.run(sync_agent(hub.url, edge, repo, hub.admin.create_token({"region": "2"})["token"]).sync_once())
        before = hub.admin.show("funnel")

        kill_redis()
        down = hub.http.get("/healthz")
        assert down.status_code == 503 and "Redis" in down.json()["error"]
        assert hub.http.get("/v1/models", headers=hub.admin._http.headers).status_code == 503

        start_redis()
        wait_for(lambda: hub.http.get("/healthz").status_code == 200, what="hub recovery")
        assert hub.admin.show("funnel") == before
        assert len(hub.admin.nodes()) == 1
        # the node's credential survived too: it keeps syncing, and a rollback reaches it
        hub.admin.rollback("funnel")
        assert asyncio.run(sync_agent(hub.url, edge, repo).sync_once()) == {"funnel": "1"}
    finally:
        hub.stop()
