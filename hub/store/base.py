"""The hub's one storage interface; :mod:`hub.store.sqlite` and :mod:`hub.store.redis`
implement it and one test suite runs against both.

Records are plain dataclasses. Everything that must stay consistent across several hub
replicas lives here (never in a replica's memory): nodes, one-time enrollment tokens,
the registry (version records; their signed bundle archives are in the blob store,
hub/blobs/, named by the digest the record holds) and the rollout log. A node's own
requests (its credential, its heartbeat) are coroutines, so a network store can answer
them on the event loop in one round trip.
Later features add their own small groups of methods (funnel config and counters,
federated rounds) rather than widening these.
"""

from __future__ import annotations

import functools
import hmac
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio

from hub.blobs.base import ArchiveReader
from hub.counters import CounterState
from hub.funnel_config import Experiment, Funnel, Variant
from models.errors import NexusError
from nexus_wire.counters import CounterKey

ActionKind = Literal["stable", "assign"]
T = TypeVar("T")
R = TypeVar("R")
#: a node credential checked against the store: the node's, a revoked one, or nobody's
NodeStatus = Literal["ok", "unknown", "revoked"]


class StoreUnavailable(NexusError):
    """The backing database cannot be reached (the HTTP layer answers 503 and callers retry)."""


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    secret_hash: str
    tags: dict[str, str]
    enrolled_at: float
    last_seen: float | None = None
    heartbeat: dict[str, Any] | None = None
    #: when ``nexus hub nodes revoke`` ended its credential (its requests are 401 from then on)
    revoked_at: float | None = None


@dataclass(frozen=True)
class NodeCheck:
    """A node's credential checked against the store; ``node`` is its record when ``status`` is ok."""

    status: NodeStatus
    node: NodeRecord | None = None


def check_credential(node: NodeRecord | None, secret_hash: str) -> NodeCheck:
    """Whether ``secret_hash`` (the sha256 of the secret a request shows) is ``node``'s."""
    if node is None or not hmac.compare_digest(node.secret_hash, secret_hash):
        return NodeCheck("unknown")
    return NodeCheck("revoked") if node.revoked_at is not None else NodeCheck("ok", node)


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: str
    manifest: dict[str, Any]
    signature: dict[str, str]
    #: sha256 and size of the signed tar archive edges download
    archive_sha256: str
    archive_bytes: int
    pushed_at: float


@dataclass(frozen=True)
class RolloutAction:
    """One entry of a model's rollout log; rollback deactivates the newest active one.

    ``stable`` makes ``version`` the default for every node; ``assign`` sends it to the
    nodes whose tags match ``selector`` and whose hash bucket is below ``percent``.
    """

    model: str
    action_id: int
    kind: ActionKind
    version: str
    selector: dict[str, str] = field(default_factory=dict)
    percent: int = 100
    created_at: float = 0.0
    active: bool = True


@dataclass(frozen=True)
class ExperimentRecord:
    """One version of an experiment and when it was written (history = every version)."""

    experiment: Experiment
    at: float


#: ``update_experiment``: written; the stored version is not ``version - 1`` (another
#: writer won); or it would be a second running experiment of its funnel
UpdateOutcome = Literal["ok", "stale", "busy"]


def experiment_to_json(experiment: Experiment) -> dict[str, Any]:
    e = experiment
    return {
        "id": e.id,
        "funnel_id": e.funnel_id,
        "variants": [[v.name, v.weight] for v in e.variants],
        "decision_step": e.decision_step,
        "status": str(e.status),
        "allocation": str(e.allocation),
        "version": e.version,
        "salt": e.salt,
    }


def experiment_from_json(raw: dict[str, Any]) -> Experiment:
    return Experiment(**{**raw, "variants": tuple(Variant(n, w) for n, w in raw["variants"])})


#: a run the hub still watches (see hub/rounds.py); every other status is final
ACTIVE_RUN_STATUSES = ("starting", "running", "exporting")


@dataclass(frozen=True)
class RunRecord:
    """A federated run started from the hub; its rounds are stored beside it."""

    run_id: str
    model: str
    status: str  # one of ACTIVE_RUN_STATUSES, "finished", "failed", "stopped"
    config: dict[str, Any]
    base_version: str
    created_at: float
    updated_at: float
    deadline_at: float
    flower_run_id: int | None = None
    reason: str | None = None
    version: str | None = None  # the registered candidate once finished
    score_name: str | None = None
    #: the nodes whose updates were aggregated, by hub node id (``n-...``); a node that did not
    #: say its id (an older edge), and every node of a run recorded before they did, by Flower's
    participants: list[str] = field(default_factory=list)
    rounds_done: int = 0

    def __post_init__(self) -> None:
        # older records hold Flower's ids as numbers: read them as the strings newer ones hold
        object.__setattr__(self, "participants", sorted({str(n) for n in self.participants}))


@dataclass(frozen=True)
class LeaseRecord:
    """A lease as the store holds it: who, with which fencing token, for how much longer."""

    name: str
    holder: str
    token: int
    ttl_s: float


@dataclass(frozen=True)
class Fence:
    """What a lease holder's guarded writes carry: accepted only while ``token`` is the lease's newest."""

    lease: str
    token: int


class Store(ABC):
    #: True when calls may wait on the network: the HTTP layer then runs them in threads
    network_io: bool = False

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` from the event loop: in a worker thread for a network store (an outage
        stalls a request, not the loop), inline otherwise (a thread hop costs more than a local
        query); hub.state.store_call is this."""
        if self.network_io:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args))
        return fn(*args)

    async def aclose(self) -> None:
        """Close what the store opened on the event loop (the app's lifespan ends with it)."""
        return None

    # -- lifecycle ---------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` when the database cannot be reached."""

    @abstractmethod
    def close(self) -> None: ...

    # -- hub metadata ------------------------------------------------------------------
    @abstractmethod
    def claim_meta(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set; return the stored value (first writer wins)."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    def swap_meta(self, key: str, old: str, new: str) -> bool:
        """Compare-and-set: ``key`` becomes ``new`` only if it holds ``old``; whether it did."""

    # -- dashboard sessions ended before they expired (logout) --------------------------
    @abstractmethod
    def end_session(self, session_id: str, expires_at: float, now: float) -> None:
        """Remember ``session_id`` as ended until ``expires_at`` (its cookie is refused by
        then anyway); forget sessions that expired before ``now``."""

    @abstractmethod
    def session_ended(self, session_id: str) -> bool: ...

    # -- enrollment --------------------------------------------------------------------
    @abstractmethod
    def add_enroll_token(self, token_hash: str, tags: dict[str, str], expires_at: float) -> None: ...

    @abstractmethod
    def take_enroll_token(self, token_hash: str, now: float) -> dict[str, str] | None:
        """Consume a token atomically: its tags the first time, ``None`` afterwards or once expired."""

    # -- nodes -------------------------------------------------------------------------
    @abstractmethod
    def add_node(self, node: NodeRecord) -> None: ...

    @abstractmethod
    def get_node(self, node_id: str) -> NodeRecord | None: ...

    @abstractmethod
    def list_nodes(self) -> list[NodeRecord]: ...

    @abstractmethod
    def record_heartbeat(self, node_id: str, at: float, heartbeat: dict[str, Any]) -> None: ...

    @abstractmethod
    def revoke_node(self, node_id: str, at: float) -> NodeRecord | None:
        """Mark the node revoked (the first time is kept); the record, ``None`` when unknown."""

    # -- a node's own requests, on the event loop: one round trip each where the store can
    async def check_node(self, node_id: str, secret_hash: str) -> NodeCheck:
        """The lookup behind every node request (hub.auth): whose credential this is."""
        return check_credential(await self.blocking(self.get_node, node_id), secret_hash)

    async def heartbeat_node(
        self,
        node_id: str,
        secret_hash: str,
        at: float,
        update: Callable[[dict[str, Any] | None], tuple[dict[str, Any], R]],
    ) -> tuple[NodeStatus, R | None]:
        """Check the credential and record a heartbeat: ``update(previous heartbeat)`` gives the
        one to store and what the caller wants back (``None`` unless the credential is ok). A
        store may call ``update`` more than once (it retries when another write came in between);
        what it returns is from the call whose heartbeat was stored."""
        check = await self.check_node(node_id, secret_hash)
        if check.node is None:
            return check.status, None
        beat, result = update(check.node.heartbeat)
        await self.blocking(self.record_heartbeat, node_id, at, beat)
        return check.status, result

    # -- registry: version records; their archives are in the blob store (hub/blobs/) --
    @abstractmethod
    def add_version(self, record: VersionRecord) -> bool:
        """Store a version's record (its archive is already in the blob store, under
        ``record.archive_sha256``); ``False`` (and nothing written) if it exists."""

    @abstractmethod
    def get_version(self, model: str, version: str) -> VersionRecord | None: ...

    @abstractmethod
    def list_versions(self, model: str) -> list[VersionRecord]:
        """Oldest first (numeric order)."""

    @abstractmethod
    def list_models(self) -> list[str]: ...

    @abstractmethod
    def open_inline_archive(self, model: str, version: str) -> ArchiveReader | None:
        """The archive of a version pushed before the blob store, which the store holds beside
        its record (read old, write new: no push writes one any more); ``None`` when it has none."""

    # -- rollout log -------------------------------------------------------------------
    @abstractmethod
    def add_action(
        self, model: str, kind: ActionKind, version: str, selector: dict[str, str], percent: int, at: float
    ) -> RolloutAction: ...

    @abstractmethod
    def list_actions(self, model: str) -> list[RolloutAction]:
        """Oldest first, inactive ones included (the history the dashboard shows)."""

    @abstractmethod
    def deactivate_action(self, model: str, action_id: int) -> bool:
        """``False`` when it was already inactive (two replicas racing a rollback)."""

    # -- funnels, experiments and their counters (docs/funnels.md) ---------------------
    @abstractmethod
    def add_funnel(self, funnel: Funnel) -> bool:
        """``False`` (and nothing written) if the id exists: funnels are immutable."""

    @abstractmethod
    def get_funnel(self, funnel_id: str) -> Funnel | None: ...

    @abstractmethod
    def list_funnels(self) -> list[Funnel]: ...

    @abstractmethod
    def add_experiment(self, experiment: Experiment, at: float) -> bool:
        """``False`` (and nothing written) if the id exists."""

    @abstractmethod
    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None: ...

    @abstractmethod
    def list_experiments(self) -> list[ExperimentRecord]: ...

    @abstractmethod
    def update_experiment(self, experiment: Experiment, at: float) -> UpdateOutcome:
        """Compare-and-set on the version, and at most one running experiment per funnel,
        atomically (hub replicas race on Thompson updates and on start)."""

    @abstractmethod
    def experiment_history(self, experiment_id: str) -> list[ExperimentRecord]:
        """Every version written, oldest first (the dashboard charts weights over time)."""

    @abstractmethod
    def merge_counters(self, node_id: str, counts: Mapping[CounterKey, int]) -> None:
        """G-counter merge: per key, keep the larger of the stored and the given count of this node."""

    @abstractmethod
    def counter_state(self, experiment_id: str) -> CounterState:
        """``{(experiment, variant, step): {node_id: count}}`` of one experiment."""

    # -- federated runs ----------------------------------------------------------------
    @abstractmethod
    def put_run(self, run: RunRecord) -> None:
        """Insert or replace a run record."""

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord | None: ...

    @abstractmethod
    def list_runs(self) -> list[RunRecord]:
        """Oldest first."""

    @abstractmethod
    def put_round(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        """Insert or replace one round's metrics (the watcher may copy a round twice)."""

    @abstractmethod
    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        """In round order."""

    # -- replicas: the rounds driver's lease, its fenced writes, shared rate limits ------
    # (hub/lease.py; implemented in hub/store/sqlite_replicas.py and redis_replicas.py)
    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_s: float, replace: str | None = None) -> int | None:
        """Take ``name`` for ``ttl_s`` seconds if nobody holds it, or ``replace`` does (a holder
        known to be dead); the new fencing token (one more than any before), else ``None``."""

    @abstractmethod
    def renew_lease(self, name: str, holder: str, token: int, ttl_s: float) -> bool:
        """Extend the lease by ``ttl_s`` from now only while ``holder`` still holds it with ``token``."""

    @abstractmethod
    def release_lease(self, name: str, holder: str, token: int) -> bool:
        """Give the lease up (only the holder with that token can); whether it did."""

    @abstractmethod
    def get_lease(self, name: str) -> LeaseRecord | None:
        """Who holds the lease now (``None``: nobody, or it expired)."""

    @abstractmethod
    def put_run_fenced(self, run: RunRecord, fence: Fence) -> bool:
        """``put_run`` only while ``fence.token`` is the newest token of its lease (no other
        replica took the lease since); ``False`` and nothing written otherwise."""

    @abstractmethod
    def put_round_fenced(self, run_id: str, round_no: int, metrics: dict[str, Any], fence: Fence) -> bool:
        """``put_round`` under the same fence."""

    @abstractmethod
    def spend_rate_token(self, bucket: str, address: str, burst: int, per_s: float) -> float:
        """Take one token from the shared bucket ``bucket`` of ``address`` (``burst`` full,
        refilled at ``per_s``); the tokens left, which may be below 1 (then it is empty)."""
