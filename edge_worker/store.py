"""The node's local store: labelled examples for local training, in SQLite (WAL).

Rows hold raw inputs (texts, sessions, visitor ids), so they never leave the node:
nothing here talks to the network. Federated training reads them in-process through
:meth:`LocalStore.emotion_examples` and :meth:`LocalStore.funnel_examples`.

One connection per store object, guarded by a lock; the HTTP app calls it from a
thread so SQLite never blocks the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_worker.assignment import sticky_assign
from nexus_service.keyfiles import private_dir, private_file
from nexus_wire.assignment import ASSIGNED
from nexus_wire.counters import CounterKey
from nexus_wire.datadir import EdgeDataDir

T = TypeVar("T")
_DAY = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    visitor_id TEXT,
    text TEXT NOT NULL,
    labels TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS funnel_outcome (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    visitor_id TEXT,
    session TEXT NOT NULL,
    converted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_visitor ON feedback (visitor_id);
CREATE INDEX IF NOT EXISTS feedback_created ON feedback (created_at);
CREATE INDEX IF NOT EXISTS outcome_visitor ON funnel_outcome (visitor_id);
CREATE INDEX IF NOT EXISTS outcome_created ON funnel_outcome (created_at);
-- funnels (edge_worker/funnels.py): per-visitor rows fall under retention and erasure;
-- funnel_count holds aggregates only, so it never shrinks and its counts stay absolute.
CREATE TABLE IF NOT EXISTS funnel_assignment (
    experiment TEXT NOT NULL, visitor_id TEXT NOT NULL, variant TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (experiment, visitor_id));
CREATE TABLE IF NOT EXISTS funnel_event (
    funnel TEXT NOT NULL, experiment TEXT NOT NULL, visitor_id TEXT NOT NULL, step TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (funnel, experiment, visitor_id, step));
CREATE INDEX IF NOT EXISTS assignment_visitor ON funnel_assignment (visitor_id);
CREATE INDEX IF NOT EXISTS assignment_created ON funnel_assignment (created_at);
CREATE INDEX IF NOT EXISTS event_visitor ON funnel_event (visitor_id);
CREATE INDEX IF NOT EXISTS event_created ON funnel_event (created_at);
CREATE TABLE IF NOT EXISTS funnel_count (
    experiment TEXT NOT NULL, variant TEXT NOT NULL, step TEXT NOT NULL,
    count INTEGER NOT NULL, synced INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (experiment, variant, step));
"""
_TABLES = ("feedback", "funnel_outcome")
#: every table holding visitor ids: retention and erasure clear them all
_VISITOR_TABLES = (*_TABLES, "funnel_assignment", "funnel_event")


class LocalStore:
    def __init__(self, path: str | Path) -> None:
        """``path`` is the database file, or a folder that gets ``edge.sqlite3``."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = EdgeDataDir(private_dir(path)).store
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(private_file(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    def add_feedback(
        self, text: str, labels: Sequence[str], visitor_id: str | None = None, now: float | None = None
    ) -> int:
        return self._insert(
            "INSERT INTO feedback (created_at, visitor_id, text, labels) VALUES (?, ?, ?, ?)",
            (time.time() if now is None else now, visitor_id, text, json.dumps(sorted(set(labels)))),
        )

    def add_outcome(
        self, session: dict[str, Any], converted: bool, visitor_id: str | None = None, now: float | None = None
    ) -> int:
        return self._insert(
            "INSERT INTO funnel_outcome (created_at, visitor_id, session, converted) VALUES (?, ?, ?, ?)",
            (time.time() if now is None else now, visitor_id, json.dumps(session, sort_keys=True), int(converted)),
        )

    def _insert(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            row_id = self._db.execute(sql, params).lastrowid
        assert row_id is not None  # an INSERT always sets it
        return row_id

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in _TABLES}

    def erase_visitor(self, visitor_id: str) -> int:
        """Delete every row of one visitor; returns how many went."""
        return sum(self.erase_visitor_rows(visitor_id).values())

    def erase_visitor_rows(self, visitor_id: str) -> dict[str, int]:
        """:meth:`erase_visitor`, counted per table (what the audit log records)."""
        return self._delete("visitor_id = ?", (visitor_id,))

    def purge_older_than(self, days: float, now: float | None = None) -> int:
        """Retention: delete rows created more than ``days`` ago; returns how many went."""
        return sum(self.purge_rows_older_than(days, now)[1].values())

    def purge_rows_older_than(self, days: float, now: float | None = None) -> tuple[float, dict[str, int]]:
        """:meth:`purge_older_than` as ``(cutoff, rows deleted per table)`` for the audit log."""
        cutoff = (time.time() if now is None else now) - days * _DAY
        return cutoff, self._delete("created_at < ?", (cutoff,))

    def _delete(self, where: str, params: tuple[Any, ...]) -> dict[str, int]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = {
                    table: self._db.execute(f"DELETE FROM {table} WHERE {where}", params).rowcount
                    for table in _VISITOR_TABLES
                }
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return removed

    def emotion_examples(self, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Texts and a float32 [N, len(labels)] 0/1 matrix in ``labels`` order (the manifest's)."""
        column = {label: i for i, label in enumerate(labels)}
        with self._lock:
            rows = self._db.execute("SELECT text, labels FROM feedback ORDER BY id").fetchall()
        matrix = np.zeros((len(rows), len(labels)), dtype=np.float32)
        for i, (_, names) in enumerate(rows):
            for name in json.loads(names):
                if name in column:
                    matrix[i, column[name]] = 1.0
        return [text for text, _ in rows], matrix

    def funnel_examples(self) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Session dicts and a float32 [N] 0/1 vector of whether each converted."""
        with self._lock:
            rows = self._db.execute("SELECT session, converted FROM funnel_outcome ORDER BY id").fetchall()
        return [json.loads(session) for session, _ in rows], np.array([c for _, c in rows], dtype=np.float32)

    # -- funnels: sticky assignment, deduplicated steps, absolute counters -------------------
    def funnel_assign(
        self,
        experiment_id: str,
        salt: str,
        visitor_id: str,
        variants: Sequence[tuple[str, float]],
        now: float | None = None,
    ) -> str:
        """The visitor's variant, stored (and counted as ``$assigned``) the first time."""
        return self._funnel_transaction(lambda: self._assign(experiment_id, salt, visitor_id, variants, now))

    def funnel_event(
        self,
        funnel_id: str,
        experiment: tuple[str, str, Sequence[tuple[str, float]]] | None,
        visitor_id: str,
        step: str,
        now: float | None = None,
    ) -> tuple[str | None, bool]:
        """Record a step once per visitor; ``(variant, counted)``.

        ``experiment`` is ``(id, salt, variants)`` of the funnel's running experiment: a
        visitor not assigned here yet gets (and is counted in) the variant the hash gives
        them, which is the one a client computing ``sha256-u53/1`` itself showed them.
        """

        def body() -> tuple[str | None, bool]:
            variant = (
                None
                if experiment is None
                else self._assign(experiment[0], experiment[1], visitor_id, experiment[2], now)
            )
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO funnel_event VALUES (?, ?, ?, ?, ?)",
                (
                    funnel_id,
                    "" if experiment is None else experiment[0],
                    visitor_id,
                    step,
                    time.time() if now is None else now,
                ),
            ).rowcount
            if inserted and experiment is not None and variant is not None:
                self._count(experiment[0], variant, step)
            return variant, bool(inserted)

        return self._funnel_transaction(body)

    def _funnel_transaction(self, body: Callable[[], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _assign(
        self, experiment_id: str, salt: str, visitor_id: str, variants: Sequence[tuple[str, float]], now: float | None
    ) -> str:
        row = self._db.execute(
            "SELECT variant FROM funnel_assignment WHERE experiment = ? AND visitor_id = ?", (experiment_id, visitor_id)
        ).fetchone()
        stored = row[0] if row else None
        variant = sticky_assign(stored, experiment_id, salt, visitor_id, variants)
        if stored is None:
            self._db.execute(
                "INSERT INTO funnel_assignment VALUES (?, ?, ?, ?)",
                (experiment_id, visitor_id, variant, time.time() if now is None else now),
            )
            self._count(experiment_id, variant, ASSIGNED)
        return variant

    def _count(self, experiment_id: str, variant: str, step: str) -> None:
        self._db.execute(
            "INSERT INTO funnel_count (experiment, variant, step, count) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (experiment, variant, step) DO UPDATE SET count = count + 1",
            (experiment_id, variant, step),
        )

    def funnel_counts(self, unsynced_only: bool = False) -> dict[CounterKey, int]:
        """Absolute local counts (or only those the hub has not acknowledged yet)."""
        where = " WHERE count > synced" if unsynced_only else ""
        with self._lock:
            rows = self._db.execute(f"SELECT experiment, variant, step, count FROM funnel_count{where}").fetchall()
        return {(e, v, s): c for e, v, s, c in rows}

    def mark_synced(self, counts: Mapping[CounterKey, int]) -> None:
        """The hub acknowledged these absolute counts (a later, larger count stays unsynced)."""
        with self._lock:
            self._db.executemany(
                "UPDATE funnel_count SET synced = max(synced, ?) WHERE experiment = ? AND variant = ? AND step = ?",
                [(c, e, v, s) for (e, v, s), c in counts.items()],
            )
