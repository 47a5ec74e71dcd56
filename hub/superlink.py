"""The hub's Flower SuperLink as a managed child process, its state kept in the hub data dir.

``start()`` launches ``flower-superlink`` (Fleet, Control and runtime APIs on one port)
with its SQLite state under ``state_dir`` so runs and nodes survive a restart;
``supervise()`` restarts it if it died; ``stop()`` sends SIGTERM, then SIGKILL.
``write_connection()`` writes the ``flwr`` CLI's ``config.toml`` so ``flwr run APP NAME``
reaches it. Flower starts its helper (``flower-superexec``) by bare name, so the
virtualenv's ``bin`` goes first on the child's PATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from models.errors import NexusError

STATE_DB = "superlink.db"
CONNECTION = "hub"
LOG_FILE = "superlink.log"


@dataclass(frozen=True)
class SuperLinkConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 9093
    #: TLS (ca, cert, key); None runs insecure, for loopback only
    tls: tuple[Path, Path, Path] | None = None
    #: public keys of the SuperNodes allowed in (enables SuperNode authentication)
    auth_public_keys: Path | None = None

    @property
    def flwr_home(self) -> Path:
        return Path(self.state_dir) / "flwr-home"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def flower_app_dir() -> Path:
    """The Flower app folder shipped inside the ``federated`` package (found without importing it)."""
    spec = importlib.util.find_spec("federated")
    if spec is None or not spec.submodule_search_locations:
        raise NexusError("the federated package is not installed; cannot run federated rounds")
    return Path(next(iter(spec.submodule_search_locations))) / "flower_app"


def run_config_arg(config: Mapping[str, Any]) -> str:
    """``{"num-rounds": 2, "model": "funnel"}`` -> ``num-rounds=2 model="funnel"`` (TOML values)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, (int, float)) else json.dumps(str(v))

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for any Flower process or ``flwr`` CLI call of this deployment."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class SuperLink:
    def __init__(self, config: SuperLinkConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def command(self) -> list[str]:
        c = self.config
        cmd = [
            str(Path(sys.executable).parent / "flower-superlink"),
            "--database", str(Path(c.state_dir) / STATE_DB),
            "--host", c.host, "--port", str(c.port),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        if c.tls is None:
            cmd.append("--insecure")
        else:
            ca, cert, key = c.tls
            cmd += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        if c.auth_public_keys is not None:
            cmd += ["--enable-supernode-auth", "--auth-list-public-keys", str(c.auth_public_keys)]
        return cmd

    def start(self, ready_timeout: float = 30.0) -> None:
        if self.running:
            return
        state = Path(self.config.state_dir)
        self.config.flwr_home.mkdir(parents=True, exist_ok=True)
        log = open(state / LOG_FILE, "ab")
        try:
            self.process = subprocess.Popen(self.command(), cwd=state, env=flower_env(self.config.flwr_home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()  # the child holds its own descriptor
        self.wait_ready(ready_timeout)
        self.write_connection()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        return self.running and _port_open(self.config.host, self.config.port)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if not self.running:
                raise NexusError(f"flower-superlink exited with code {self.process.returncode if self.process else None}; see {Path(self.config.state_dir) / LOG_FILE}")
            time.sleep(0.2)
        raise NexusError(f"flower-superlink not ready on {self.config.address} after {timeout:.0f}s; see {Path(self.config.state_dir) / LOG_FILE}")

    def supervise(self) -> bool:
        """Restart the SuperLink if it died; True when it did. Its state db keeps runs and nodes."""
        if self.process is None or self.running:
            return False
        self.restarts += 1
        self.start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: takes its helpers along
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """One ``flwr`` CLI call against this SuperLink (``--format json``); its parsed answer."""
        cmd = [str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"]
        done = subprocess.run(cmd, env=flower_env(self.config.flwr_home), capture_output=True, text=True, timeout=timeout)
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            raise NexusError(f"flwr {args[0]} failed: {(done.stderr or done.stdout).strip()[-300:]}") from None
        if not answer.get("success", False):
            raise NexusError(f"flwr {args[0]} failed: {answer.get('error-message', answer)}")
        return answer

    def submit(self, run_config: Mapping[str, Any], app_dir: Path | None = None) -> int:
        """Start a federated run of the app with ``run_config`` (see federated/settings.py); its run id."""
        answer = self.flwr("run", str(app_dir or flower_app_dir()), CONNECTION, "--run-config", run_config_arg(run_config))
        return int(answer["run-id"])

    def run_status(self, run_id: int) -> str:
        """Flower's status of a run: "pending", "starting", "running", "finished:completed", "finished:failed", ..."""
        return str(self.flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"][0]["status"])

    def online_nodes(self) -> list[int]:
        """Ids of the SuperNodes currently connected."""
        nodes = self.flwr("supernode", "ls", CONNECTION)["nodes"]
        return [int(n["node-id"]) for n in nodes if n.get("status") == "online"]

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), CONNECTION)

    def write_connection(self, name: str = CONNECTION) -> Path:
        """``$FLWR_HOME/config.toml`` naming this SuperLink, for ``flwr run APP name``."""
        lines = [f"[superlink.{name}]", f'address = "{self.config.address}"']
        lines.append("insecure = true" if self.config.tls is None else f'root-certificates = "{self.config.tls[0]}"')
        path = self.config.flwr_home / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
