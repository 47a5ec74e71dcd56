"""Embedded default store: one SQLite file in WAL mode.

One connection guarded by a lock: the hub's writes are tiny (a heartbeat is one UPDATE),
so serialising them costs less than a connection per thread and keeps every write
ordered. Several hub processes may open the same file; SQLite's own locking and the
busy timeout keep them consistent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from hub.counters import CounterState
from hub.funnel_config import Experiment, Funnel, Status
from hub.store.base import (
    ActionKind,
    ArchiveReader,
    ExperimentRecord,
    NodeRecord,
    RolloutAction,
    RunRecord,
    Store,
    StoreUnavailable,
    UpdateOutcome,
    VersionRecord,
    experiment_from_json,
    experiment_to_json,
)
from hub.store.sqlite_replicas import SqliteReplicas
from models.bundle import version_key
from nexus_service.keyfiles import private_file
from nexus_wire.counters import CounterKey

T = TypeVar("T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enroll_tokens (token_hash TEXT PRIMARY KEY, tags TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, tags TEXT NOT NULL,
    enrolled_at REAL NOT NULL, last_seen REAL, heartbeat TEXT, revoked_at REAL);
CREATE TABLE IF NOT EXISTS ended_sessions (session_id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version TEXT NOT NULL, record TEXT NOT NULL, archive BLOB NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS actions (
    action_id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, record TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS actions_model ON actions (model, action_id);
CREATE TABLE IF NOT EXISTS funnels (funnel_id TEXT PRIMARY KEY, steps TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT NOT NULL, version INTEGER NOT NULL, funnel_id TEXT NOT NULL, status TEXT NOT NULL,
    record TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (experiment_id, version));
-- the one-running-experiment-per-funnel rule, enforced by the database itself
CREATE TABLE IF NOT EXISTS running_experiments (funnel_id TEXT PRIMARY KEY, experiment_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS funnel_counters (
    experiment TEXT NOT NULL, variant TEXT NOT NULL, step TEXT NOT NULL, node TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (experiment, variant, step, node));
CREATE TABLE IF NOT EXISTS fl_runs (run_id TEXT PRIMARY KEY, created_at REAL NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fl_rounds (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, round));
"""


class _SqliteArchive(ArchiveReader):
    def __init__(self, path: Path, db: sqlite3.Connection, blob: sqlite3.Blob) -> None:
        self.path, self.db, self.blob = path, db, blob

    def read(self, offset: int, length: int) -> bytes:
        try:
            self.blob.seek(min(offset, len(self.blob)))
            return self.blob.read(length)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def close(self) -> None:
        self.blob.close()
        self.db.close()


class SqliteStore(SqliteReplicas, Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                private_file(self.path), check_same_thread=False, timeout=10.0, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a crash may lose the last heartbeats, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            # stores made before revocation existed lack the column
            if "revoked_at" not in {row[1] for row in self._db.execute("PRAGMA table_info(nodes)")}:
                self._db.execute("ALTER TABLE nodes ADD COLUMN revoked_at REAL")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from None

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def ping(self) -> None:
        self._run("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def claim_meta(self, key: str, value: str) -> str:
        self._run("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        return self._run("SELECT value FROM meta WHERE key = ?", (key,))[0][0]

    def get_meta(self, key: str) -> str | None:
        rows = self._run("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def swap_meta(self, key: str, old: str, new: str) -> bool:
        return bool(self._run("UPDATE meta SET value = ? WHERE key = ? AND value = ? RETURNING key", (new, key, old)))

    def end_session(self, session_id: str, expires_at: float, now: float) -> None:
        self._run("DELETE FROM ended_sessions WHERE expires_at < ?", (now,))
        self._run("INSERT OR REPLACE INTO ended_sessions VALUES (?, ?)", (session_id, expires_at))

    def session_ended(self, session_id: str) -> bool:
        return bool(self._run("SELECT 1 FROM ended_sessions WHERE session_id = ?", (session_id,)))

    def add_enroll_token(self, token_hash: str, tags: dict[str, str], expires_at: float) -> None:
        self._run("INSERT INTO enroll_tokens VALUES (?, ?, ?)", (token_hash, json.dumps(tags), expires_at))

    def take_enroll_token(self, token_hash: str, now: float) -> dict[str, str] | None:
        rows = self._run("DELETE FROM enroll_tokens WHERE token_hash = ? RETURNING tags, expires_at", (token_hash,))
        if not rows or rows[0][1] < now:
            return None
        return json.loads(rows[0][0])

    def add_node(self, node: NodeRecord) -> None:
        self._run(
            "INSERT INTO nodes (node_id, secret_hash, tags, enrolled_at) VALUES (?, ?, ?, ?)",
            (node.node_id, node.secret_hash, json.dumps(node.tags), node.enrolled_at),
        )

    @staticmethod
    def _node(row: tuple[Any, ...]) -> NodeRecord:
        return NodeRecord(
            row[0], row[1], json.loads(row[2]), row[3], row[4], json.loads(row[5]) if row[5] else None, row[6]
        )

    _NODE_COLUMNS = "node_id, secret_hash, tags, enrolled_at, last_seen, heartbeat, revoked_at"

    def get_node(self, node_id: str) -> NodeRecord | None:
        rows = self._run(f"SELECT {self._NODE_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,))
        return self._node(rows[0]) if rows else None

    def list_nodes(self) -> list[NodeRecord]:
        rows = self._run(f"SELECT {self._NODE_COLUMNS} FROM nodes ORDER BY enrolled_at, node_id")
        return [self._node(row) for row in rows]

    def record_heartbeat(self, node_id: str, at: float, heartbeat: dict[str, Any]) -> None:
        self._run(
            "UPDATE nodes SET last_seen = ?, heartbeat = ? WHERE node_id = ?", (at, json.dumps(heartbeat), node_id)
        )

    def revoke_node(self, node_id: str, at: float) -> NodeRecord | None:
        rows = self._run(
            f"UPDATE nodes SET revoked_at = COALESCE(revoked_at, ?) WHERE node_id = ? RETURNING {self._NODE_COLUMNS}",
            (at, node_id),
        )
        return self._node(rows[0]) if rows else None

    def add_version(self, record: VersionRecord) -> bool:
        # a zero-length archive column: the bytes are in the blob store (older rows hold theirs)
        rows = self._run(
            "INSERT OR IGNORE INTO versions VALUES (?, ?, ?, x'') RETURNING model",
            (record.model, record.version, json.dumps(asdict(record))),
        )
        return bool(rows)

    def get_version(self, model: str, version: str) -> VersionRecord | None:
        rows = self._run("SELECT record FROM versions WHERE model = ? AND version = ?", (model, version))
        return VersionRecord(**json.loads(rows[0][0])) if rows else None

    def list_versions(self, model: str) -> list[VersionRecord]:
        records = [
            VersionRecord(**json.loads(r[0]))
            for r in self._run("SELECT record FROM versions WHERE model = ?", (model,))
        ]
        return sorted(records, key=lambda r: version_key(r.version))

    def list_models(self) -> list[str]:
        return [r[0] for r in self._run("SELECT DISTINCT model FROM versions ORDER BY model")]

    def open_inline_archive(self, model: str, version: str) -> ArchiveReader | None:
        # A connection of its own per reader (WAL lets it read beside writes), so a download
        # never holds the lock heartbeats and /healthz wait on; and one blob handle for all of
        # its reads: a fresh handle walks the blob's overflow pages from the start to seek.
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None
        try:
            row = db.execute(
                "SELECT rowid FROM versions WHERE model = ? AND version = ? AND length(archive) > 0", (model, version)
            ).fetchone()
            if row is None:
                db.close()
                return None
            return _SqliteArchive(self.path, db, db.blobopen("versions", "archive", row[0], readonly=True))
        except sqlite3.Error as exc:
            db.close()
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def add_action(
        self, model: str, kind: ActionKind, version: str, selector: dict[str, str], percent: int, at: float
    ) -> RolloutAction:
        body: dict[str, Any] = {
            "kind": kind,
            "version": version,
            "selector": selector,
            "percent": percent,
            "created_at": at,
        }
        rows = self._run(
            "INSERT INTO actions (model, record) VALUES (?, ?) RETURNING action_id", (model, json.dumps(body))
        )
        return RolloutAction(model=model, action_id=rows[0][0], **body)

    def list_actions(self, model: str) -> list[RolloutAction]:
        rows = self._run("SELECT action_id, record, active FROM actions WHERE model = ? ORDER BY action_id", (model,))
        return [RolloutAction(model=model, action_id=r[0], active=bool(r[2]), **json.loads(r[1])) for r in rows]

    def deactivate_action(self, model: str, action_id: int) -> bool:
        rows = self._run(
            "UPDATE actions SET active = 0 WHERE model = ? AND action_id = ? AND active = 1 RETURNING action_id",
            (model, action_id),
        )
        return bool(rows)

    def put_run(self, run: RunRecord) -> None:
        self._run(
            "INSERT OR REPLACE INTO fl_runs VALUES (?, ?, ?)", (run.run_id, run.created_at, json.dumps(asdict(run)))
        )

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._run("SELECT record FROM fl_runs WHERE run_id = ?", (run_id,))
        return RunRecord(**json.loads(rows[0][0])) if rows else None

    def list_runs(self) -> list[RunRecord]:
        return [
            RunRecord(**json.loads(r[0])) for r in self._run("SELECT record FROM fl_runs ORDER BY created_at, run_id")
        ]

    def put_round(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        self._run("INSERT OR REPLACE INTO fl_rounds VALUES (?, ?, ?)", (run_id, round_no, json.dumps(metrics)))

    def list_rounds(self, run_id: str) -> list[dict[str, Any]]:
        return [
            json.loads(r[0])
            for r in self._run("SELECT metrics FROM fl_rounds WHERE run_id = ? ORDER BY round", (run_id,))
        ]

    # -- funnels, experiments, counters ------------------------------------------------
    def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """``body(db)`` inside BEGIN IMMEDIATE: other hub processes on the file wait, never interleave."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = body(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def add_funnel(self, funnel: Funnel) -> bool:
        rows = self._run(
            "INSERT OR IGNORE INTO funnels VALUES (?, ?) RETURNING funnel_id",
            (funnel.id, json.dumps(list(funnel.steps))),
        )
        return bool(rows)

    def get_funnel(self, funnel_id: str) -> Funnel | None:
        rows = self._run("SELECT funnel_id, steps FROM funnels WHERE funnel_id = ?", (funnel_id,))
        return Funnel(rows[0][0], tuple(json.loads(rows[0][1]))) if rows else None

    def list_funnels(self) -> list[Funnel]:
        return [
            Funnel(r[0], tuple(json.loads(r[1])))
            for r in self._run("SELECT funnel_id, steps FROM funnels ORDER BY funnel_id")
        ]

    def add_experiment(self, experiment: Experiment, at: float) -> bool:
        def body(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM experiments WHERE experiment_id = ?", (experiment.id,)).fetchone():
                return False
            self._insert_experiment(db, experiment, at)
            return True

        return self._transaction(body)

    @staticmethod
    def _insert_experiment(db: sqlite3.Connection, experiment: Experiment, at: float) -> None:
        db.execute(
            "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?)",
            (
                experiment.id,
                experiment.version,
                experiment.funnel_id,
                str(experiment.status),
                json.dumps(experiment_to_json(experiment)),
                at,
            ),
        )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> ExperimentRecord:
        return ExperimentRecord(experiment_from_json(json.loads(row[0])), row[1])

    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        rows = self._run(
            "SELECT record, at FROM experiments WHERE experiment_id = ? ORDER BY version DESC LIMIT 1", (experiment_id,)
        )
        return self._record(rows[0]) if rows else None

    def list_experiments(self) -> list[ExperimentRecord]:
        rows = self._run(
            "SELECT record, at FROM experiments e"
            " WHERE version = (SELECT max(version) FROM experiments WHERE experiment_id = e.experiment_id)"
            " ORDER BY experiment_id"
        )
        return [self._record(r) for r in rows]

    def update_experiment(self, experiment: Experiment, at: float) -> UpdateOutcome:
        def body(db: sqlite3.Connection) -> UpdateOutcome:
            row = db.execute(
                "SELECT max(version) FROM experiments WHERE experiment_id = ?", (experiment.id,)
            ).fetchone()
            if row[0] != experiment.version - 1:
                return "stale"
            holder = db.execute(
                "SELECT experiment_id FROM running_experiments WHERE funnel_id = ?", (experiment.funnel_id,)
            ).fetchone()
            if experiment.status == Status.RUNNING:
                if holder and holder[0] != experiment.id:
                    return "busy"
                db.execute(
                    "INSERT OR IGNORE INTO running_experiments VALUES (?, ?)", (experiment.funnel_id, experiment.id)
                )
            elif holder and holder[0] == experiment.id:
                db.execute("DELETE FROM running_experiments WHERE funnel_id = ?", (experiment.funnel_id,))
            self._insert_experiment(db, experiment, at)
            return "ok"

        return self._transaction(body)

    def experiment_history(self, experiment_id: str) -> list[ExperimentRecord]:
        rows = self._run(
            "SELECT record, at FROM experiments WHERE experiment_id = ? ORDER BY version", (experiment_id,)
        )
        return [self._record(r) for r in rows]

    def merge_counters(self, node_id: str, counts: Mapping[CounterKey, int]) -> None:
        rows = [(e, v, s, node_id, c) for (e, v, s), c in counts.items()]

        def body(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO funnel_counters VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (experiment, variant, step, node) DO UPDATE SET count = max(count, excluded.count)",
                rows,
            )

        self._transaction(body)

    def counter_state(self, experiment_id: str) -> CounterState:
        state: CounterState = {}
        for variant, step, node, count in self._run(
            "SELECT variant, step, node, count FROM funnel_counters WHERE experiment = ?", (experiment_id,)
        ):
            state.setdefault((experiment_id, variant, step), {})[node] = count
        return state
