"""The hub's one storage interface; :mod:`hub.store.sqlite` and :mod:`hub.store.redis`
implement it and one test suite runs against both.

Records are plain dataclasses. Everything that must stay consistent across several hub
replicas lives here (never in a replica's memory): nodes, one-time enrollment tokens,
the registry (version records and their signed bundle archives) and the rollout log.
Later features add their own small groups of methods (funnel config and counters,
federated rounds) rather than widening these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hub.counters import CounterState
from hub.funnel_config import Experiment, Funnel, Variant
from models.errors import NexusError
from nexus_wire.counters import CounterKey

ActionKind = Literal["stable", "assign"]


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


class ArchiveReader(ABC):
    """Ranged reads of one stored archive; close it when done (a context manager)."""

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end)."""

    def close(self) -> None:
        return None

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(ABC):
    #: True when calls may wait on the network: the HTTP layer then runs them in threads
    network_io: bool = False

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

    # -- registry ----------------------------------------------------------------------
    @abstractmethod
    def add_version(self, record: VersionRecord, archive: bytes) -> bool:
        """Store a version and its archive; ``False`` (and nothing written) if it exists."""

    @abstractmethod
    def get_version(self, model: str, version: str) -> VersionRecord | None: ...

    @abstractmethod
    def list_versions(self, model: str) -> list[VersionRecord]:
        """Oldest first (numeric order)."""

    @abstractmethod
    def list_models(self) -> list[str]: ...

    @abstractmethod
    def read_archive(self, model: str, version: str) -> bytes | None: ...

    @abstractmethod
    def read_archive_range(self, model: str, version: str, offset: int, length: int) -> bytes | None:
        """Up to ``length`` bytes of a version's archive from ``offset`` (fewer at its end),
        reading only those; ``None`` when there is no such archive."""

    def open_archive(self, model: str, version: str) -> ArchiveReader | None:
        """A reader for many ranges of one archive (a download reads one member in chunks);
        a store whose every range read costs a fresh lookup keeps a handle open instead."""
        if self.read_archive_range(model, version, 0, 0) is None:
            return None
        return _RangeArchive(self, model, version)

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


class _RangeArchive(ArchiveReader):
    def __init__(self, store: Store, model: str, version: str) -> None:
        self.store, self.model, self.version = store, model, version

    def read(self, offset: int, length: int) -> bytes:
        data = self.store.read_archive_range(self.model, self.version, offset, length)
        if data is None:
            raise StoreUnavailable(f"archive of {self.model} {self.version} vanished while being read")
        return data
