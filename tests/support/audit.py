"""Edits of an edge's audit log behind its back, as someone with file access would make them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nexus_wire.datadir import EdgeDataDir


def tamper(data_dir: Path, *statements: tuple[str, tuple]) -> None:
    """Edit the storage directly, as someone with file access would (triggers dropped first)."""
    conn = sqlite3.connect(EdgeDataDir(data_dir).audit_db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()
