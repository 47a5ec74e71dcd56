"""The audit log's stored Merkle tree: the hash of every complete aligned subtree, written in
the same transaction as the entry that completes it (about two rows per entry).

With them a proof for any two tree heads costs O(log n) primary-key lookups instead of
rehashing every leaf (nexus_wire/merkle.py says which subtrees a proof folds). They are
derived data: ``verify`` recomputes each one from the entries, and a log written before
they existed gets them on its next open by :func:`fill`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from nexus_wire.merkle import Frontier, Subtree, SubtreeHash, extend, range_subtrees

TABLE = "subtrees"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
"""


class MissingSubtree(LookupError):
    """The log lacks a subtree a proof needs (written before they were stored, or removed)."""


def frontier_text(frontier: Frontier) -> str:
    """The ``frontier`` column of a tree head: what the next append extends."""
    return json.dumps([[height, digest.hex()] for height, digest in frontier])


def parse_frontier(text: str) -> Frontier:
    """ValueError (or TypeError) for a column that is not one."""
    return [(int(height), bytes.fromhex(digest)) for height, digest in json.loads(text)]


def stored(conn: sqlite3.Connection) -> bool:
    """Whether the log has the table (a log no new version has opened yet has not)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    return row is not None


def record(conn: sqlite3.Connection, size: int, completed: Iterable[tuple[int, bytes]]) -> None:
    """Store the subtrees that leaf number ``size`` completed (``merkle.extend``)."""
    conn.executemany(
        f"INSERT INTO {TABLE} (level, idx, hash) VALUES (?, ?, ?)",
        [(level, (size >> level) - 1, digest.hex()) for level, digest in completed],
    )


def leaves_stored(conn: sqlite3.Connection) -> int:
    row = conn.execute(f"SELECT MAX(idx) FROM {TABLE} WHERE level = 0").fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def lookup(conn: sqlite3.Connection) -> SubtreeHash:
    def subtree(node: Subtree) -> bytes:
        row = conn.execute(f"SELECT hash FROM {TABLE} WHERE level = ? AND idx = ?", node).fetchone()
        if row is None:
            raise MissingSubtree(f"the audit log holds no hash of subtree {node} (level, index)")
        return bytes.fromhex(row[0])

    return subtree


def fetch(conn: sqlite3.Connection, nodes: Iterable[Subtree]) -> SubtreeHash:
    """``nodes`` in one query (a proof needs a few dozen), then looked up in memory."""
    wanted = sorted(set(nodes))
    values = ", ".join("(?, ?)" for _ in wanted)
    rows = (
        conn.execute(
            f"SELECT s.level, s.idx, s.hash FROM (VALUES {values}) AS w "
            f"JOIN {TABLE} AS s ON s.level = w.column1 AND s.idx = w.column2",
            [part for node in wanted for part in node],
        ).fetchall()
        if wanted
        else []
    )
    found = {(level, idx): bytes.fromhex(digest) for level, idx, digest in rows}

    def subtree(node: Subtree) -> bytes:
        if node not in found:
            raise MissingSubtree(f"the audit log holds no hash of subtree {node} (level, index)")
        return found[node]

    return subtree


def fill(conn: sqlite3.Connection, start: int, leaves: Iterable[bytes]) -> int:
    """Store the subtrees of ``leaves`` (leaf hashes numbered from ``start``) on top of the
    ``start`` leaves already stored; returns the tree size reached."""
    subtree = lookup(conn)
    frontier: Frontier = [(level, subtree((level, idx))) for level, idx in range_subtrees(0, start)]
    size = start
    for leaf in leaves:
        frontier, completed = extend(frontier, leaf)
        size += 1
        record(conn, size, completed)
    return size
