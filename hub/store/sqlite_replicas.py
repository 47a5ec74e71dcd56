"""The SQLite store's share of what replicas coordinate on (hub/lease.py): the rounds
driver's lease and fencing tokens, the fenced run writes, the shared rate-limit buckets.

Several hub processes on one host may open the same SQLite file, so these are real here
too: each operation is one ``BEGIN IMMEDIATE`` transaction, and expiry is judged by this
host's clock, the one clock every process on the file shares. The tables are created on
first use (a lease is renewed every few seconds, a bucket is spent only on a failure).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from hub.store.base import Fence, LeaseRecord, RunRecord

T = TypeVar("T")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL,"
    " expires_at REAL NOT NULL)",
    # the newest token of each lease, kept when the lease itself is released or expires
    "CREATE TABLE IF NOT EXISTS lease_fences (name TEXT PRIMARY KEY, token INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rate_buckets (bucket TEXT NOT NULL, address TEXT NOT NULL, tokens REAL NOT NULL,"
    " at REAL NOT NULL, PRIMARY KEY (bucket, address))",
)


def _tables(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        db.execute(statement)


def _fence_ok(db: sqlite3.Connection, fence: Fence) -> bool:
    row = db.execute("SELECT token FROM lease_fences WHERE name = ?", (fence.lease,)).fetchone()
    return row is not None and row[0] == fence.token


class SqliteReplicas:
    """Mixed into :class:`hub.store.sqlite.SqliteStore`."""

    if TYPE_CHECKING:

        def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T: ...

    def acquire_lease(self, name: str, holder: str, ttl_s: float, replace: str | None = None) -> int | None:
        def take(db: sqlite3.Connection) -> int | None:
            _tables(db)
            now = time.time()
            row = db.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[1] >= now and row[0] != replace:
                return None
            fence = db.execute("SELECT token FROM lease_fences WHERE name = ?", (name,)).fetchone()
            token = (fence[0] if fence else 0) + 1
            db.execute("INSERT OR REPLACE INTO lease_fences VALUES (?, ?)", (name, token))
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)", (name, holder, token, now + ttl_s))
            return int(token)

        return self._transaction(take)

    def renew_lease(self, name: str, holder: str, token: int, ttl_s: float) -> bool:
        def renew(db: sqlite3.Connection) -> bool:
            _tables(db)
            now = time.time()
            done = db.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND token = ? AND expires_at >= ?",
                (now + ttl_s, name, holder, token, now),
            )
            return done.rowcount == 1

        return self._transaction(renew)

    def release_lease(self, name: str, holder: str, token: int) -> bool:
        def release(db: sqlite3.Connection) -> bool:
            _tables(db)
            done = db.execute("DELETE FROM leases WHERE name = ? AND holder = ? AND token = ?", (name, holder, token))
            return done.rowcount == 1

        return self._transaction(release)

    def get_lease(self, name: str) -> LeaseRecord | None:
        def read(db: sqlite3.Connection) -> LeaseRecord | None:
            _tables(db)
            row = db.execute("SELECT holder, token, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            left = row[2] - time.time() if row else 0.0
            return LeaseRecord(name, row[0], int(row[1]), left) if row and left >= 0 else None

        return self._transaction(read)

    def put_run_fenced(self, run: RunRecord, fence: Fence) -> bool:
        def put(db: sqlite3.Connection) -> bool:
            _tables(db)
            if not _fence_ok(db, fence):
                return False
            db.execute(
                "INSERT OR REPLACE INTO fl_runs VALUES (?, ?, ?)", (run.run_id, run.created_at, json.dumps(asdict(run)))
            )
            return True

        return self._transaction(put)

    def put_round_fenced(self, run_id: str, round_no: int, metrics: dict[str, Any], fence: Fence) -> bool:
        def put(db: sqlite3.Connection) -> bool:
            _tables(db)
            if not _fence_ok(db, fence):
                return False
            db.execute("INSERT OR REPLACE INTO fl_rounds VALUES (?, ?, ?)", (run_id, round_no, json.dumps(metrics)))
            return True

        return self._transaction(put)

    def spend_rate_token(self, bucket: str, address: str, burst: int, per_s: float) -> float:
        def spend(db: sqlite3.Connection) -> float:
            _tables(db)
            now = time.time()
            row = db.execute(
                "SELECT tokens, at FROM rate_buckets WHERE bucket = ? AND address = ?", (bucket, address)
            ).fetchone()
            level = float(burst) if row is None else min(float(burst), row[0] + (now - row[1]) * per_s)
            level = max(0.0, level - 1.0)
            db.execute("INSERT OR REPLACE INTO rate_buckets VALUES (?, ?, ?, ?)", (bucket, address, level, now))
            # a bucket full again is the same as none: forget those, so the table holds only recent failures
            db.execute("DELETE FROM rate_buckets WHERE bucket = ? AND at < ?", (bucket, now - burst / per_s))
            return level

        return self._transaction(spend)
