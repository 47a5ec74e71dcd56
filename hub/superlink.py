"""The hub's Flower SuperLink as a managed child process, its state kept in the hub data dir,
and the two processes beside it: the app guard that launches its ServerApps and the Fleet
gateway SuperNodes connect through.

``start()`` launches ``flower-superlink`` with its SQLite state under ``state_dir`` so runs
and nodes survive a restart. Its Fleet, Control and Runtime APIs share one port, and the
Control API (run submission) authenticates nobody in open-source Flower, so it listens on
127.0.0.1 only: the hub's own ``flwr`` calls reach it there (``write_connection()`` writes
the CLI's ``config.toml``), SuperNodes reach its Fleet API through the :class:`FleetGateway`
on the address the hub is configured with (hub/fleet_gateway.py). It runs with
``--isolation process``: it launches no ServerApp itself; the :func:`server_app_guard`
(federated/app_guard.py) takes each ServerApp task with the SuperExec secret they share and
launches it only when the hub's key signed its FAB (hub/apps.py), with the hub's signing key
named in its environment for the ServerApp's receipts. ``supervise()`` restarts a child that
died; ``stop()`` sends SIGTERM, then SIGKILL. Flower starts the app processes by bare name,
so the virtualenv's ``bin`` goes first on the children's PATH.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import NexusError
from nexus_service.app_guard import AppGuard, GuardConfig, superexec_secret
from nexus_service.processes import FlowerProcess, flower_env, port_open
from nexus_wire.datadir import SuperLinkDir
from nexus_wire.heads import KEY_ENV
from nexus_wire.runconfig import RunConfig

log = logging.getLogger("nexus.hub.superlink")
CONNECTION = "hub"
#: where the hub's own SuperLink listens, whatever the hub's --host: only the hub may submit runs
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class SuperLinkConfig:
    state_dir: Path
    #: where ``flwr`` calls reach it: the hub's own always listens on :data:`LOOPBACK`
    host: str = LOOPBACK
    port: int = 9093
    #: TLS (ca, cert, key) of its port (needed for SuperNode authentication); None: plain HTTP
    tls: tuple[Path, Path, Path] | None = None
    #: only SuperNodes whose public key was registered (``flwr supernode register``) may join
    supernode_auth: bool = False
    #: the hub's signing key: its guard trusts the apps it signed, its ServerApp signs a
    #: receipt for every node reply with it
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
        self.layout = SuperLinkDir(Path(config.state_dir))
        super().__init__(self.layout.root, self.layout.log, config.flwr_home, config.host, config.port)
        self.config = config

    def command(self) -> list[str]:
        c = self.config
        cmd = [
            str(Path(sys.executable).parent / "flower-superlink"),
            "--database", str(self.layout.database),
            "--host", LOOPBACK, "--port", str(c.port),
            "--disable-runtime-dependency-installation",
            "--isolation", "process", "--superexec-auth-secret-file", str(self.layout.superexec_secret),
        ]  # fmt: skip
        if c.tls is None:
            cmd.append("--insecure")
        else:
            ca, cert, key = c.tls
            cmd += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        if c.supernode_auth:
            cmd.append("--enable-supernode-auth")
        return cmd

    def env(self) -> dict[str, str]:
        env = super().env()
        # Flower's legacy gRPC Control and Fleet servers (off unless these are set) would listen
        # on 0.0.0.0:9093 and 0.0.0.0:9092, beside the loopback port
        env.pop("FLWR_INTERNAL_GRPC_CONTROL_API", None)
        env.pop("FLWR_INTERNAL_GRPC_FLEET_API", None)
        return env

    def start(self, ready_timeout: float = 30.0) -> None:
        superexec_secret(self.layout.superexec_secret)
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

    def submit(self, config: RunConfig, app_dir: Path | None = None, signed_fab: str | None = None) -> int:
        """Start a federated run of the app with ``config`` as its run config; its run id.
        ``signed_fab``: the FAB digest the hub signed for it; a run of other bytes is refused by
        every guard, so a mismatch (the app folder changed since) is logged at once."""
        answer = self.flwr("run", str(app_dir or flower_app_dir()), CONNECTION, "--run-config", config.to_toml())
        if signed_fab is not None and not signed_fab.startswith(str(answer.get("fab-hash", ""))):
            log.error(
                "flwr submitted FAB %s, the hub signed %s: the guards will refuse the run (restart the hub)",
                answer.get("fab-hash"),
                signed_fab[:8],
            )
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


def server_app_guard(link: SuperLink) -> AppGuard:
    """The guard that launches the SuperLink's ServerApps: those whose FAB the hub's key signed."""
    c = link.config
    if c.receipt_key is None:
        raise NexusError("the hub's SuperLink needs the hub's signing key for its app guard")
    return AppGuard(
        GuardConfig(
            "serverapp",
            c.port,
            link.layout.superexec_secret,
            ("--hub-key", str(c.receipt_key), "--apps", str(link.layout.trusted_apps)),
            link.layout.root,
            link.layout.guard_log,
            c.flwr_home,
            root_certificates=None if c.tls is None else c.tls[0],
            env={KEY_ENV: str(c.receipt_key)},  # the ServerApp it starts signs receipts with it
        )
    )


@dataclass(frozen=True)
class GatewayConfig:
    host: str  # where SuperNodes connect: the hub's --host
    port: int  # ... and --superlink-port
    link: SuperLinkConfig  # the SuperLink behind it, on loopback
    #: the hub's admin token file: its bearer may list runs, logs and nodes through the gateway
    admin_token: Path | None = None


class FleetGateway(FlowerProcess):
    """``python -m hub.fleet_gateway`` on the public Flower address (hub/fleet_gateway.py)."""

    binary = "hub.fleet_gateway"

    def __init__(self, config: GatewayConfig) -> None:
        layout = SuperLinkDir(Path(config.link.state_dir))
        super().__init__(layout.root, layout.gateway_log, config.link.flwr_home, config.host, config.port)
        self.config = config

    def command(self) -> list[str]:
        c = self.config
        cmd = [sys.executable, "-m", "hub.fleet_gateway", "--host", c.host, "--port", str(c.port)]
        cmd += ["--upstream-port", str(c.link.port)]
        if c.link.tls is not None:
            ca, cert, key = c.link.tls
            cmd += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        if c.admin_token is not None:
            cmd += ["--admin-token-file", str(c.admin_token)]
        return cmd

    def answers(self) -> bool:
        """Whether something listens on its address (a wildcard bind answers on loopback too)."""
        return port_open(LOOPBACK if self.host in ("", "0.0.0.0", "::", "[::]") else self.host, self.port)

    def ready(self) -> bool:
        return self.running and self.answers()
