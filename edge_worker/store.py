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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DB_NAME = "edge.sqlite3"
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
"""
_TABLES = ("feedback", "funnel_outcome")


class LocalStore:
    def __init__(self, path: str | Path) -> None:
        """``path`` is the database file, or a folder that gets ``edge.sqlite3``."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / DB_NAME
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
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

    def add_feedback(self, text: str, labels: Sequence[str], visitor_id: str | None = None, now: float | None = None) -> int:
        return self._insert(
            "INSERT INTO feedback (created_at, visitor_id, text, labels) VALUES (?, ?, ?, ?)",
            (time.time() if now is None else now, visitor_id, text, json.dumps(sorted(set(labels)))),
        )

    def add_outcome(self, session: dict[str, Any], converted: bool, visitor_id: str | None = None, now: float | None = None) -> int:
        return self._insert(
            "INSERT INTO funnel_outcome (created_at, visitor_id, session, converted) VALUES (?, ?, ?, ?)",
            (time.time() if now is None else now, visitor_id, json.dumps(session, sort_keys=True), int(converted)),
        )

    def _insert(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            return int(self._db.execute(sql, params).lastrowid)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {table: self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in _TABLES}

    def erase_visitor(self, visitor_id: str) -> int:
        """Delete every row of one visitor; returns how many went."""
        return self._delete("visitor_id = ?", (visitor_id,))

    def purge_older_than(self, days: float, now: float | None = None) -> int:
        """Retention: delete rows created more than ``days`` ago; returns how many went."""
        cutoff = (time.time() if now is None else now) - days * _DAY
        return self._delete("created_at < ?", (cutoff,))

    def _delete(self, where: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = sum(self._db.execute(f"DELETE FROM {table} WHERE {where}", params).rowcount for table in _TABLES)
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
