"""Running HTTP servers: the uvicorn options every node shares, and child server processes.

The benchmark, ``nexus demo`` and the live-server tests start nodes as child processes
with :class:`ServerProcess` and stop them cleanly, also on Ctrl-C.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from models.errors import NexusError


def run_uvicorn(factory: str, host: str, port: int, workers: int, log_level: str = "info") -> None:
    """Serve ``module:factory`` with the server settings the benchmark compares under."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # Our loggers ride on uvicorn's handlers, which every worker process configures.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["nexus"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=log_config,
        access_log=False,
        # uvloop + httptools when installed (they are with uvicorn[standard])
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=10,
    )


def free_port() -> int:
    """A port free on loopback right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def edge_argv(
    port: int,
    *,
    models_dir: Path | None = None,
    data_dir: Path | None = None,
    workers: int = 1,
    log_level: str = "warning",
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "nexus_cli",
        "edge",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        log_level,
    ]
    if models_dir is not None:
        argv += ["--models", str(models_dir)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return argv


class ServerProcess:
    """A server in a child process, ready once ``ready_path`` answers 200."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        *,
        env: Mapping[str, str] | None = None,
        ready_path: str = "/v2/health/ready",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def start(self, timeout: float = 60.0) -> ServerProcess:
        # Its own process group, so a Ctrl-C in the terminal reaches only us and we stop it in order.
        self._proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail, code = self.log_tail(), self._proc.returncode
                self.stop()
                raise NexusError(f"{self.name} exited with code {code}: {tail}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise NexusError(f"{self.name} not ready on {self.url} after {timeout:.0f} s: {tail}")

    @property
    def pid(self) -> int | None:
        """The server's own process (with ``--workers`` > 1, uvicorn's supervisor)."""
        return None if self._proc is None else self._proc.pid

    def log_tail(self, lines: int = 8) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL of the group if it hangs."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None
        self._log.close()
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
