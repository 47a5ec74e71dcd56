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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.bundle import version_key
from hub.store.base import ActionKind, NodeRecord, RolloutAction, Store, StoreUnavailable, VersionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enroll_tokens (token_hash TEXT PRIMARY KEY, tags TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, tags TEXT NOT NULL,
    enrolled_at REAL NOT NULL, last_seen REAL, heartbeat TEXT);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version TEXT NOT NULL, record TEXT NOT NULL, archive BLOB NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS actions (
    action_id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, record TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS actions_model ON actions (model, action_id);
"""


class SqliteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a crash may lose the last heartbeats, never corrupt the file.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
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
        return NodeRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], json.loads(row[5]) if row[5] else None)

    def get_node(self, node_id: str) -> NodeRecord | None:
        rows = self._run("SELECT * FROM nodes WHERE node_id = ?", (node_id,))
        return self._node(rows[0]) if rows else None

    def list_nodes(self) -> list[NodeRecord]:
        return [self._node(row) for row in self._run("SELECT * FROM nodes ORDER BY enrolled_at, node_id")]

    def record_heartbeat(self, node_id: str, at: float, heartbeat: dict[str, Any]) -> None:
        self._run("UPDATE nodes SET last_seen = ?, heartbeat = ? WHERE node_id = ?", (at, json.dumps(heartbeat), node_id))

    def add_version(self, record: VersionRecord, archive: bytes) -> bool:
        rows = self._run(
            "INSERT OR IGNORE INTO versions VALUES (?, ?, ?, ?) RETURNING model",
            (record.model, record.version, json.dumps(asdict(record)), archive),
        )
        return bool(rows)

    def get_version(self, model: str, version: str) -> VersionRecord | None:
        rows = self._run("SELECT record FROM versions WHERE model = ? AND version = ?", (model, version))
        return VersionRecord(**json.loads(rows[0][0])) if rows else None

    def list_versions(self, model: str) -> list[VersionRecord]:
        records = [VersionRecord(**json.loads(r[0])) for r in self._run("SELECT record FROM versions WHERE model = ?", (model,))]
        return sorted(records, key=lambda r: version_key(r.version))

    def list_models(self) -> list[str]:
        return [r[0] for r in self._run("SELECT DISTINCT model FROM versions ORDER BY model")]

    def read_archive(self, model: str, version: str) -> bytes | None:
        rows = self._run("SELECT archive FROM versions WHERE model = ? AND version = ?", (model, version))
        return bytes(rows[0][0]) if rows else None

    def add_action(self, model: str, kind: ActionKind, version: str, selector: dict[str, str], percent: int, at: float) -> RolloutAction:
        body = {"kind": kind, "version": version, "selector": selector, "percent": percent, "created_at": at}
        rows = self._run("INSERT INTO actions (model, record) VALUES (?, ?) RETURNING action_id", (model, json.dumps(body)))
        return RolloutAction(model=model, action_id=rows[0][0], **body)

    def list_actions(self, model: str) -> list[RolloutAction]:
        rows = self._run("SELECT action_id, record, active FROM actions WHERE model = ? ORDER BY action_id", (model,))
        return [RolloutAction(model=model, action_id=r[0], active=bool(r[2]), **json.loads(r[1])) for r in rows]

    def deactivate_action(self, model: str, action_id: int) -> bool:
        rows = self._run(
            "UPDATE actions SET active = 0 WHERE model = ? AND action_id = ? AND active = 1 RETURNING action_id", (model, action_id)
        )
        return bool(rows)
