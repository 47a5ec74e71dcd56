"""The edge's Flower SuperNode as a managed child process, pointed at the hub's SuperLink.

``--node-config`` carries the edge's data dir (the ClientApp reads the local store from
it) and its tags (``region`` ...), which the hub's node selection matches. Values are
TOML: strings are quoted here, or the SuperNode refuses to start. Each SuperNode on a
host needs its own ``port`` (its ClientApp runtime API). Flower starts its helper
(``flower-superexec``) by bare name, so the virtualenv's ``bin`` goes first on PATH.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from models.errors import NexusError

LOG_FILE = "supernode.log"


@dataclass(frozen=True)
class SuperNodeConfig:
    superlink: str  # "host:port" of the hub's SuperLink
    data_dir: Path  # the edge's data dir: local store, Flower home, log
    port: int = 9094
    host: str = "127.0.0.1"
    tags: Mapping[str, str] = field(default_factory=dict)  # e.g. {"region": "3"}
    #: CA bundle of the SuperLink's TLS certificate; None connects insecurely (loopback only)
    root_certificates: Path | None = None
    #: (private, public) key files when the SuperLink authenticates SuperNodes
    auth_keys: tuple[Path, Path] | None = None

    @property
    def flwr_home(self) -> Path:
        return Path(self.data_dir) / "flwr-home"


def node_config_arg(data_dir: Path, tags: Mapping[str, str]) -> str:
    """``data-dir="..." region="3"``: TOML values, strings quoted (JSON string syntax is valid TOML)."""
    items = {"data-dir": str(Path(data_dir).resolve()), **{k: str(v) for k, v in tags.items()}}
    for key in items:
        if not key.replace("-", "").replace("_", "").isalnum():
            raise NexusError(f"node tag {key!r} must be letters, digits, - or _")
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class SuperNode:
    def __init__(self, config: SuperNodeConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def command(self) -> list[str]:
        c = self.config
        cmd = [
            str(Path(sys.executable).parent / "flower-supernode"),
            "--superlink", c.superlink,
            "--host", c.host, "--port", str(c.port),
            "--node-config", node_config_arg(c.data_dir, c.tags),
        ]  # fmt: skip
        cmd += ["--insecure"] if c.root_certificates is None else ["--root-certificates", str(c.root_certificates)]
        if c.auth_keys is not None:
            cmd += ["--auth-supernode-private-key", str(c.auth_keys[0]), "--auth-supernode-public-key", str(c.auth_keys[1])]
        return cmd

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "FLWR_HOME": str(self.config.flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }

    def start(self, ready_timeout: float = 30.0) -> None:
        if self.running:
            return
        data_dir = Path(self.config.data_dir)
        self.config.flwr_home.mkdir(parents=True, exist_ok=True)
        log = open(data_dir / LOG_FILE, "ab")
        try:
            self.process = subprocess.Popen(self.command(), cwd=data_dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.wait_ready(ready_timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """Up with its runtime API listening (it registers with the SuperLink about a second later)."""
        return self.running and _port_open(self.config.host, self.config.port)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if not self.running:
                raise NexusError(f"flower-supernode exited with code {self.process.returncode if self.process else None}; see {Path(self.config.data_dir) / LOG_FILE}")
            time.sleep(0.2)
        raise NexusError(f"flower-supernode not ready on port {self.config.port} after {timeout:.0f}s; see {Path(self.config.data_dir) / LOG_FILE}")

    def supervise(self) -> bool:
        """Restart the SuperNode if it died; True when it did (it rejoins with a new node id)."""
        if self.process is None or self.running:
            return False
        self.restarts += 1
        self.start()
        return True

    def stop(self, timeout: float = 10.0, kill: bool = False) -> None:
        """SIGTERM (it signs off from the SuperLink within ~2 s), SIGKILL after ``timeout`` or at once with ``kill``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
