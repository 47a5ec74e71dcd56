"""The edge's Flower SuperNode as a managed child process, pointed at the hub's SuperLink.

``--node-config`` carries the edge's data dir (the ClientApp reads the local store from
it), its tags (``region`` ...), which the hub's node selection matches, and its hub-assigned
node id (``nexus-node``), by which the hub names a run's participants. Values are
TOML: strings are quoted here, or the SuperNode refuses to start. Each SuperNode on a
host needs its own ``port`` (its ClientApp runtime API, loopback only).

It runs with ``--isolation process``: Flower launches no ClientApp itself. The app guard
(nexus_service/app_guard.py, federated/app_guard.py) beside it takes its tasks with the
SuperExec secret they share and launches a ClientApp only when the hub key the node pinned at
enrollment signed its FAB; a refusal is an entry on the node's audit log. The SuperNode and
its guard start, restart and stop together.

Both run in sessions of their own, so an edge that is SIGKILLed leaves them running; their pids
are kept in the data dir (``EdgeDataDir.supernode_pid``, ``guard_pid``) and the next start ends
them, with the guard's ClientApps, before it starts its own: one SuperNode per data dir. It
ends them rather than adopt them (as the hub adopts its SuperLink): the new edge may join another
SuperLink, with other tags or another port, a process it did not start cannot be waited on or
restarted, and a SuperNode is cheap to start and rejoins with a new node id anyway.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import NexusError
from nexus_service.app_guard import MARKER as GUARD_MARKER
from nexus_service.app_guard import AppGuard, GuardConfig, superexec_secret
from nexus_service.processes import FlowerProcess, end_process_tree, recorded_pid
from nexus_wire.datadir import NODE_CONFIG_DATA_DIR, NODE_CONFIG_NEXUS_NODE, EdgeDataDir
from nexus_wire.names import NODE_ID, fullmatch

log = logging.getLogger("nexus.edge.supernode")


@dataclass(frozen=True)
class SuperNodeConfig:
    superlink: str  # "host:port" of the hub's SuperLink
    data_dir: Path  # the edge's data dir: local store, Flower home, log
    port: int = 9094
    host: str = "127.0.0.1"
    tags: Mapping[str, str] = field(default_factory=dict)  # e.g. {"region": "3"}
    nexus_node: str | None = None  # the node id the hub assigned at enrollment (``n-...``)
    #: CA bundle of the SuperLink's TLS certificate; None connects insecurely (loopback only)
    root_certificates: Path | None = None
    #: this SuperNode's private key file (ECDSA, OpenSSH format) when the SuperLink authenticates
    #: SuperNodes (its public half registered there with ``flwr supernode register``)
    auth_key: Path | None = None

    @property
    def flwr_home(self) -> Path:
        return EdgeDataDir(Path(self.data_dir)).flwr_home


def node_config_arg(data_dir: Path, tags: Mapping[str, str], nexus_node: str | None = None) -> str:
    """``data-dir="..." region="3" nexus-node="n-..."``: TOML values, strings quoted (JSON string
    syntax is valid TOML)."""
    if nexus_node is not None and not fullmatch(NODE_ID, nexus_node):
        raise NexusError(f"node id {nexus_node!r} is not a hub-assigned id (n- and 16 hex digits)")
    items = {NODE_CONFIG_DATA_DIR: str(Path(data_dir).resolve()), **{k: str(v) for k, v in tags.items()}}
    if nexus_node is not None:
        items[NODE_CONFIG_NEXUS_NODE] = nexus_node  # after the tags: no tag can pose as the node's id
    for key in items:
        if not key.replace("-", "").replace("_", "").isalnum():
            raise NexusError(f"node tag {key!r} must be letters, digits, - or _")
    return " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())


class SuperNode(FlowerProcess):
    """``stop()`` sends SIGTERM: the SuperNode signs off from the SuperLink within ~2 s.
    A restarted SuperNode rejoins with a new node id."""

    binary = "flower-supernode"

    def __init__(self, config: SuperNodeConfig) -> None:
        data_dir = EdgeDataDir(Path(config.data_dir))
        super().__init__(data_dir.root, data_dir.supernode_log, config.flwr_home, config.host, config.port)
        self.config = config
        self.layout = data_dir
        self.guard = AppGuard(
            GuardConfig(
                "clientapp",
                config.port,
                data_dir.superexec_secret,
                ("--edge-data-dir", str(data_dir.root)),
                data_dir.root,
                data_dir.guard_log,
                config.flwr_home,
            )
        )
        self.pid_file = data_dir.supernode_pid
        self.guard.pid_file = data_dir.guard_pid

    def command(self) -> list[str]:
        c = self.config
        cmd = [
            str(Path(sys.executable).parent / "flower-supernode"),
            "--superlink", c.superlink,
            "--host", c.host, "--port", str(c.port),
            "--node-config", node_config_arg(c.data_dir, c.tags, c.nexus_node),
            "--isolation", "process", "--superexec-auth-secret-file", str(self.layout.superexec_secret),
        ]  # fmt: skip
        cmd += ["--insecure"] if c.root_certificates is None else ["--root-certificates", str(c.root_certificates)]
        if c.auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(c.auth_key)]
        return cmd

    def end_orphans(self) -> None:
        """End the SuperNode and the app guard (with its ClientApps) an edge killed before it
        could stop them left on this data dir; the guard first, so no ClientApp starts meanwhile."""
        ours = {p.pid for p in (self.process, self.guard.process) if p is not None}
        # both command lines name the data dir's SuperExec secret: a pid reused since, or another
        # data dir's SuperNode, is left alone
        here = str(self.layout.superexec_secret).encode()
        for name, pid_file, marker in (
            ("app guard", self.layout.guard_pid, GUARD_MARKER),
            ("SuperNode", self.layout.supernode_pid, self.binary.encode()),
        ):
            pid = recorded_pid(pid_file, marker, here)
            if pid is not None and pid not in ours:
                log.warning("ending the %s (pid %d) a previous edge process left running on this data dir", name, pid)
                end_process_tree(pid)

    def start(self, ready_timeout: float = 30.0) -> None:
        superexec_secret(self.layout.superexec_secret)
        self.end_orphans()  # else it holds the port (and the node's place at the SuperLink)
        super().start(ready_timeout)
        assert self.process is not None
        self.guard.start_for(self.process.pid, ready_timeout)

    def supervise(self) -> bool:
        """Restart the SuperNode (and with it its guard) or the guard alone if it died; True when one was."""
        if super().supervise():
            self.guard.stop()
            assert self.process is not None
            self.guard.start_for(self.process.pid)
            return True
        if self.process is None or self.guard.running:
            return False
        self.guard.restarts += 1
        self.guard.start_for(self.process.pid)
        return True

    def stop(self, timeout: float = 10.0, kill: bool = False) -> None:
        self.guard.stop(timeout, kill)  # first: no ClientApp starts while the SuperNode signs off
        super().stop(timeout, kill)
