"""Servers for the benchmarks, ``nexus demo`` and the live-server tests.

Nodes run as child processes with :class:`ServerProcess`, stopped cleanly, also on Ctrl-C;
an in-process ASGI app runs under uvicorn in a thread with :class:`ServerThread`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette

from models.errors import NexusError

#: the folder this code was imported from (it holds nexus_cli.py and the packages)
CODE_ROOT = Path(__file__).resolve().parents[1]


def nexus_argv(*args: str) -> list[str]:
    """``python -P -m nexus_cli ARGS``: ``-P`` leaves the working directory off the child's
    ``sys.path``, so a folder named like one of our packages there (a ``hub/`` of the user's)
    cannot shadow it; :func:`child_env` puts this code's own root in its place."""
    return [sys.executable, "-P", "-m", "nexus_cli", *args]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that runs this code: ``env`` over ours, with
    :data:`CODE_ROOT` first on ``PYTHONPATH`` (the child imports what the parent runs, from
    a checkout as from an install)."""
    merged = {**os.environ, **(env or {})}
    merged["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), merged.get("PYTHONPATH", "")) if p)
    return merged


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
        *nexus_argv(),
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
        self.env = child_env(env)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  (the child writes it until stop() closes it)

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


class ServerThread:
    """An ASGI app under uvicorn in a daemon thread, on a socket bound before it starts."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("server thread did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
