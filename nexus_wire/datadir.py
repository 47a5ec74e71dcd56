"""The data-dir layouts: every file and folder the edge and the hub keep, named once.

The edge's data dir is shared by its server workers, its Flower SuperNode and that
SuperNode's ClientApp processes (which find it in the node config, ``data-dir``); the
privacy officer's tools read it too. The hub's holds its keys, its embedded state store and
the folders its SuperLink and ServerApp write. Every module that opens one of these paths
asks the layout for it, so a file name is spelled in exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the SuperNode's ``--node-config`` key that tells its ClientApp where the edge's data dir is
NODE_CONFIG_DATA_DIR = "data-dir"
#: the key that carries the node's hub-assigned id (``n-...``, nexus_wire/names.py NODE_ID): the
#: ClientApp's query reply tells it the ServerApp, which names participants by it, not by Flower's ids
NODE_CONFIG_NEXUS_NODE = "nexus-node"
#: what SQLite keeps beside a database file while it is open (WAL mode) or mid-transaction
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def _paths(layout: object) -> Iterator[tuple[str, Path]]:
    for name, member in vars(type(layout)).items():
        if isinstance(member, property):
            value = getattr(layout, name)
            if isinstance(value, Path):
                yield name, value


@dataclass(frozen=True)
class EdgeDataDir:
    """An edge node's data dir (0700, files 0600)."""

    root: Path

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> EdgeDataDir | None:
        """The data dir a SuperNode's ClientApp was given; None without one (Flower's simulation)."""
        value = node_config.get(NODE_CONFIG_DATA_DIR)
        return cls(Path(str(value))) if value else None

    # -- what the node keeps and never sends
    @property
    def store(self) -> Path:  # the local store (SQLite): inputs, labels, outcomes, funnel events and counts
        return self.root / "edge.sqlite3"

    @property
    def funnel_config(self) -> Path:  # the hub's funnel config as last pulled, with its ETag
        return self.root / "funnel-config.json"

    # -- the audit log and the privacy officer's secrets
    @property
    def audit_db(self) -> Path:  # the audit log (SQLite): entries, signed tree heads, hub receipts
        return self.root / "audit.sqlite3"

    @property
    def audit_key(self) -> Path:  # the node's Ed25519 key (PEM) that signs the audit log's tree heads
        return self.root / "node-audit-key.pem"

    @property
    def audit_salt(self) -> Path:  # the secret that keys the visitor-id digests of erasure entries
        return self.root / "audit-salt"

    @property
    def operator_token(self) -> Path:  # the bearer token for the node's privacy endpoints
        return self.root / "operator.token"

    @property
    def privacy_budget(self) -> Path:  # the DP accountant's state (JSON): budget, RDP spent per order, history
        return self.root / "privacy-budget.json"

    @property
    def privacy_budget_lock(self) -> Path:  # flock'ed by every process that reads or spends the budget
        return self.root / "privacy-budget.json.lock"

    @property
    def models(self) -> Path:  # folder: the model repository of a node with a hub (no --models): its rollouts go here
        return self.root / "models"

    # -- the link to the hub
    @property
    def identity(self) -> Path:  # node id, node secret, the hub key pinned at enrollment, tags (JSON)
        return self.root / "hub-identity.json"

    @property
    def sync_state(self) -> Path:  # model sync: assignments ETag, what was applied and refused (JSON)
        return self.root / "hub-sync.json"

    @property
    def staging(self) -> Path:  # folder of half-downloaded hub bundles, one per model, version and digest
        return self.root / "hub-staging"

    @property
    def leader_lock(self) -> Path:  # flock'ed by the one worker process that talks to the hub and runs the SuperNode
        return self.root / "hub-sync.lock"

    @property
    def superlink(self) -> Path:  # the SuperLink address the hub named last (kept for a restart while it is down)
        return self.root / "hub-superlink"

    # -- Flower
    @property
    def supernode_log(self) -> Path:  # the child SuperNode's stdout and stderr
        return self.root / "supernode.log"

    @property
    def flwr_home(self) -> Path:  # folder: FLWR_HOME of the SuperNode and its ClientApp processes
        return self.root / "flwr-home"

    @property
    def trusted_apps(self) -> Path:  # the hub's signed app statements as last fetched (nexus_wire/apps.py)
        return self.root / "hub-apps.json"

    @property
    def superexec_secret(self) -> Path:  # the SuperNode's and the app guard's shared secret: only the guard takes tasks
        return self.root / "superexec.secret"

    @property
    def guard_log(self) -> Path:  # the app guard's stdout and stderr, with its ClientApp processes'
        return self.root / "app-guard.log"

    @property
    def supernode_pid(self) -> Path:  # pid of the running SuperNode: a restarted edge ends one a killed edge left
        return self.root / "supernode.pid"

    @property
    def guard_pid(self) -> Path:  # pid of the SuperNode's running app guard, ended with an orphaned SuperNode
        return self.root / "app-guard.pid"

    # -- metrics
    @property
    def metrics(self) -> Path:  # folder of per-worker metric snapshots (JSON) with --workers > 1
        return self.root / "metrics"

    def paths(self) -> dict[str, Path]:
        """Every path above by attribute name."""
        return dict(_paths(self))

    def names(self, path: Path) -> bool:
        """Whether ``path`` is one of the layout's files, inside one of its folders, or a
        SQLite sidecar of one of its databases."""
        path = Path(path)
        for named in self.paths().values():
            if path == named or path.is_relative_to(named):
                return True
        return any(path == Path(f"{db}{suffix}") for db in (self.store, self.audit_db) for suffix in SQLITE_SIDECARS)


@dataclass(frozen=True)
class SuperLinkDir:
    """The state dir of a SuperLink the hub runs (the hub's ``flower`` folder, or any other)."""

    root: Path

    @property
    def database(self) -> Path:  # the SuperLink's SQLite state: runs, nodes, messages
        return self.root / "superlink.db"

    @property
    def log(self) -> Path:  # the child SuperLink's stdout and stderr
        return self.root / "superlink.log"

    @property
    def pid(self) -> Path:  # pid of the running SuperLink, so a restarted hub adopts it
        return self.root / "superlink.pid"

    @property
    def flwr_home(self) -> Path:  # folder: FLWR_HOME of the SuperLink and of the hub's ``flwr`` calls
        return self.root / "flwr-home"

    @property
    def address(self) -> Path:  # the loopback HOST:PORT the SuperLink serves on (Control API included)
        return self.root / "superlink.address"

    @property
    def trusted_apps(self) -> Path:  # the hub's signed statements of the apps it submits (nexus_wire/apps.py)
        return self.root / "apps.json"

    @property
    def superexec_secret(self) -> Path:  # the SuperLink's and the app guard's shared secret: only the guard takes tasks
        return self.root / "superexec.secret"

    @property
    def gateway_log(self) -> Path:  # the Fleet gateway's stdout and stderr
        return self.root / "fleet-gateway.log"

    @property
    def gateway_pid(self) -> Path:  # pid of the running Fleet gateway, so a restarted hub adopts it
        return self.root / "fleet-gateway.pid"

    @property
    def guard_log(self) -> Path:  # the app guard's stdout and stderr, with its ServerApp processes'
        return self.root / "app-guard.log"

    @property
    def guard_pid(self) -> Path:  # pid of the running app guard, so a restarted hub adopts it
        return self.root / "app-guard.pid"


@dataclass(frozen=True)
class RunDir:
    """One federated run's folder, shared by the hub and the ServerApp it submits."""

    root: Path

    @property
    def base(self) -> Path:  # folder: the bundle the run starts from, unpacked
        return self.root / "base"

    @property
    def arrays(self) -> Path:  # the ServerApp's final weights (npz)
        return self.root / "final.npz"

    @property
    def summary(self) -> Path:  # the ServerApp's run summary (JSON): status, metrics per round
        return self.root / "final.json"

    @property
    def candidate(self) -> Path:  # folder: the bundle built from the final weights, before the registry signs it
        return self.root / "candidate"


@dataclass(frozen=True)
class HubDataDir:
    """The hub's data dir (0700: it holds the signing key and the admin token)."""

    root: Path

    @property
    def signing_key(self) -> Path:  # the hub's Ed25519 key (PEM): signs bundles, assignments and receipts
        return self.root / "hub-signing-key.pem"

    @property
    def admin_token(self) -> Path:  # the operator's bearer token for the admin API, CLI and dashboard
        return self.root / "admin.token"

    @property
    def admin_token_next(self) -> Path:  # the token a rotate-admin is installing (renamed onto admin_token)
        return self.root / "admin.token.next"

    @property
    def store(self) -> Path:  # the embedded state store (SQLite), when no --store is given
        return self.root / "hub.sqlite3"

    @property
    def blobs(self) -> Path:  # folder: the bundle archives by sha256 (hub/blobs/files.py), when no --blobs is given
        return self.root / "blobs"

    @property
    def rounds(self) -> Path:  # folder of run folders (RunDir), when no --rounds-dir is given
        return self.root / "rounds"

    @property
    def flower(self) -> Path:  # folder: the state dir of the hub's SuperLink (SuperLinkDir)
        return self.root / "flower"

    @property
    def superlink(self) -> SuperLinkDir:
        return SuperLinkDir(self.flower)

    def paths(self) -> dict[str, Path]:
        """Every path above by attribute name."""
        return dict(_paths(self))
