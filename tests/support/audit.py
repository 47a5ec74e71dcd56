"""Edits of an edge's audit log behind its back, as someone with file access would make them,
and the hub's receipts for its entries."""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_worker.audit import AuditReader, Entry, TreeHead, tree
from edge_worker.audit.log import expected_binding
from nexus_service.keyfiles import load_signing_key
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import key_id, sign_receipt, utc_now
from nexus_wire.merkle import Frontier, extend, frontier_root


def tamper(data_dir: Path, *statements: tuple[str, tuple]) -> None:
    """Edit the storage directly, as someone with file access would (triggers dropped first)."""
    conn = sqlite3.connect(EdgeDataDir(data_dir).audit_db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()


def receipt_for(hub_key: Ed25519PrivateKey, entry: Entry, **changes: Any) -> dict[str, Any]:
    """The receipt the hub signs for ``entry``: the binding its log expects, with ``changes``
    (another node, path, body digest, format...) made before signing."""
    return sign_receipt(hub_key, {**expected_binding(entry), **changes}, utc_now())


def rewrite(data_dir: Path, entry_id: int, **changes: Any) -> None:
    """Change entry ``entry_id`` and re-sign every tree head from it on with the node's own
    key (and recompute the frontiers and subtree hashes), so the log verifies on its own; the
    hub's receipts from that entry on are dropped (no one but the hub can re-sign those)."""
    layout = EdgeDataDir(data_dir)
    key = load_signing_key(layout.audit_key)
    reader = AuditReader(data_dir)
    entries, old_heads = list(reader.entries()), reader.tree_heads()
    entries[entry_id - 1] = changed = replace(entries[entry_id - 1], **changes)
    statements: list[tuple[str, tuple]] = [
        ("DELETE FROM tree_heads WHERE size >= ?", (entry_id,)),
        ("DELETE FROM subtrees WHERE (idx + 1) << level >= ?", (entry_id,)),
        ("DELETE FROM receipts WHERE entry_id >= ?", (entry_id,)),
        (
            "UPDATE entries SET time = ?, event = ?, channel = ?, destination = ?, kind = ?, bytes = ?, sha256 = ?, "
            "summary = ?, reason = ? WHERE id = ?",
            (
                changed.time,
                changed.event,
                changed.channel,
                changed.destination,
                changed.kind,
                changed.bytes,
                changed.sha256,
                changed.summary_json,
                changed.reason,
                entry_id,
            ),
        ),
    ]
    frontier: Frontier = []
    for size, entry in enumerate(entries, start=1):
        frontier, completed = extend(frontier, entry.leaf_hash())
        if size < entry_id:
            continue
        unsigned = TreeHead(size, frontier_root(frontier).hex(), old_heads[size].time, key_id(key.public_key()), "")
        signature = base64.b64encode(key.sign(unsigned.message())).decode()
        statements.append(
            (
                "INSERT INTO tree_heads (size, root, time, key_id, signature, frontier) VALUES (?, ?, ?, ?, ?, ?)",
                (size, unsigned.root, unsigned.time, unsigned.key_id, signature, tree.frontier_text(frontier)),
            )
        )
        statements += [
            ("INSERT INTO subtrees (level, idx, hash) VALUES (?, ?, ?)", (level, (size >> level) - 1, digest.hex()))
            for level, digest in completed
        ]
    tamper(data_dir, *statements)
