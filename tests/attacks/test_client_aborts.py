"""Issue 14, against a real ``nexus edge serve`` and ``nexus hub serve``: clients that go away mid-body.

Before: each abort logged two full tracebacks (the app's "unhandled error" and uvicorn's
"Exception in ASGI application"): 100 aborts added 542 KB to the edge's log and 326 KB to the
hub's. Now an abort is one INFO line (method, path, bytes read) and no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models.bundle import DEFAULT_REPOSITORY
from nexus_tools.processes import free_port
from tests.support.processes import NEXUS, HubProcess, wait_for

ABORTS = 100
#: one line per abort, and a short one
MAX_BYTES_PER_ABORT = 200
SENT = 1000
DECLARED = 4000
EDGE_HEALTH = "/v2/health/ready"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    running = HubProcess(tmp_path / "hub", free_port())
    yield running
    running.stop()


def _healthy(url: str, path: str) -> bool:
    try:
        return httpx.get(url + path, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _abort(url: str, path: str) -> None:
    """A POST that declares a body under every limit, sends part of it and hangs up."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {DECLARED}\r\n\r\n"
        sock.sendall(head.encode() + b'{"x": "' + b"a" * (SENT - 7))


def _settled(log: Path, timeout: float = 10.0) -> int:
    """The log's size once it stopped growing for half a second."""
    size, deadline = -1, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = log.stat().st_size
        if now == size:
            return now
        size = now
        time.sleep(0.5)
    return log.stat().st_size


def _attack(url: str, path: str, log: Path, health: str) -> str:
    before = _settled(log)
    started = time.monotonic()
    for _ in range(ABORTS):
        _abort(url, path)
    assert time.monotonic() - started < 30
    assert _healthy(url, health)  # still serving
    after = _settled(log)
    added = log.read_bytes()[before:after].decode(errors="replace")
    assert "Traceback" not in added, added[:2000]
    assert after - before <= ABORTS * MAX_BYTES_PER_ABORT, f"{after - before} bytes for {ABORTS} aborts"
    assert added.count("\n") <= ABORTS
    return added


def test_aborts_on_the_edge_are_one_info_line_each(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "edge.log"
    args = ["edge", "serve", "--models", str(DEFAULT_REPOSITORY), "--data-dir", str(tmp_path / "data")]
    with open(log, "ab") as out:  # no hub: nothing but the aborts writes to its log
        edge = subprocess.Popen(
            [*NEXUS, *args, "--port", str(port), "--log-level", "info"],
            stdout=out,
            stderr=out,
            env={**os.environ, "NEXUS_MODELS": "funnel"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url, EDGE_HEALTH) or edge.poll() is not None, timeout=60, what="edge start")
        added = _attack(url, "/v1/funnel/outcome", log, EDGE_HEALTH)
        aborted = [line for line in added.splitlines() if "client aborted" in line]
        assert len(aborted) == ABORTS, added[-2000:]
        assert "INFO" in aborted[0] and f"POST /v1/funnel/outcome after {SENT} bytes" in aborted[0], aborted[0]
    finally:
        edge.terminate()
        edge.wait(15)


def test_aborts_on_the_hub_are_one_info_line_each(hub: HubProcess) -> None:
    added = _attack(hub.url, "/v1/enroll", hub.log, "/healthz")
    aborted = [line for line in added.splitlines() if "client aborted" in line]
    assert len(aborted) == ABORTS, added[-2000:]
    assert f"INFO nexus.hub: client aborted POST /v1/enroll after {SENT} bytes" in aborted[0], aborted[0]
