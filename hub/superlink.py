"""The hub's Flower SuperLink as a managed child process, its state kept in the hub data dir.

``start()`` launches ``flower-superlink`` (Fleet, Control and runtime APIs on one port)
with its SQLite state under ``state_dir`` so runs and nodes survive a restart, and the
hub's signing key named in its environment for the ServerApp's receipts;
``supervise()`` restarts it if it died; ``stop()`` sends SIGTERM, then SIGKILL.
``write_connection()`` writes the ``flwr`` CLI's ``config.toml`` so ``flwr run APP NAME``
reaches it. Flower starts its helper (``flower-superexec``) by bare name, so the
virtualenv's ``bin`` goes first on the child's PATH.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import NexusError
from nexus_service.processes import FlowerProcess, flower_env
from nexus_wire.datadir import SuperLinkDir
from nexus_wire.heads import KEY_ENV
from nexus_wire.runconfig import RunConfig

CONNECTION = "hub"


@dataclass(frozen=True)
class SuperLinkConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 9093
    #: TLS (ca, cert, key); None runs insecure, for loopback only
    tls: tuple[Path, Path, Path] | None = None
    #: public keys of the SuperNodes allowed in (enables SuperNode authentication)
    auth_public_keys: Path | None = None
    #: the hub's signing key: its ServerApp signs a receipt for every node reply
    receipt_key: Path | None = None

    @property
    def flwr_home(self) -> Path:
        return SuperLinkDir(Path(self.state_dir)).flwr_home

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def flower_app_dir() -> Path:
    """The Flower app folder shipped inside the ``federated`` package (found without importing it)."""
    spec = importlib.util.find_spec("federated")
    if spec is None or not spec.submodule_search_locations:
        raise NexusError("the federated package is not installed; cannot run federated rounds")
    return Path(next(iter(spec.submodule_search_locations))) / "flower_app"


class SuperLink(FlowerProcess):
    binary = "flower-superlink"

    def __init__(self, config: SuperLinkConfig) -> None:
        state = SuperLinkDir(Path(config.state_dir))
        super().__init__(state.root, state.log, config.flwr_home, config.host, config.port)
        self.config = config

    def command(self) -> list[str]:
        c = self.config
        cmd = [
            str(Path(sys.executable).parent / "flower-superlink"),
            "--database", str(SuperLinkDir(Path(c.state_dir)).database),
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

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.config.receipt_key is not None:
            env[KEY_ENV] = str(self.config.receipt_key)  # reaches the ServerApp, which the SuperLink starts
        return env

    def start(self, ready_timeout: float = 30.0) -> None:
        super().start(ready_timeout)
        self.write_connection()

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """One ``flwr`` CLI call against this SuperLink (``--format json``); its parsed answer."""
        cmd = [str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"]
        done = subprocess.run(
            cmd, env=flower_env(self.config.flwr_home), capture_output=True, text=True, timeout=timeout
        )
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            raise NexusError(f"flwr {args[0]} failed: {(done.stderr or done.stdout).strip()[-300:]}") from None
        if not answer.get("success", False):
            raise NexusError(f"flwr {args[0]} failed: {answer.get('error-message', answer)}")
        return answer

    def submit(self, config: RunConfig, app_dir: Path | None = None) -> int:
        """Start a federated run of the app with ``config`` as its run config; its run id."""
        answer = self.flwr("run", str(app_dir or flower_app_dir()), CONNECTION, "--run-config", config.to_toml())
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
