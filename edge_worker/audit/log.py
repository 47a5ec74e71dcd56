"""The node's tamper-evident audit log: every byte that leaves it, every refusal, erasure
and retention run.

Storage is an append-only SQLite table (WAL) in the data dir. Entries are the leaves of an
RFC 6962 Merkle tree (leaf = SHA-256(0x00 || canonical entry), node = SHA-256(0x01 || l || r)).
After *every* append the node signs a tree head (size, root, time) with its own Ed25519
key, so ``verify`` (verify.py) can name the exact first entry that was changed, reordered or
deleted: entry ``n`` is the one whose head ``n`` no longer matches. Deleting the newest
entries together with their heads is only visible against a tree head held elsewhere
(the hub's copy, see docs/privacy.md).

Hub receipts (an Ed25519 signature over the sha256, bytes and time the hub received) are
stored beside their entry, outside the tree: they arrive after the entry was signed.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_worker.audit.merkle import (
    Frontier,
    extend_frontier,
    frontier_root,
    inclusion_path,
    leaf_hash,
    tree_root,
    verify_inclusion,
)
from models.errors import NexusError
from nexus_service.keyfiles import load_or_create_key, public_key_b64, public_key_from_b64, read_or_create
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import canonical_json, key_id, signature_verifies, tree_head_message, utc_now

SEND, REFUSAL, ERASURE, RETENTION, HUB_KEY = "send", "refusal", "erasure", "retention", "hub-key"

_MESSAGE_ID = "CASE WHEN json_valid(summary) THEN json_extract(summary, '$.message') END"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    channel TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    summary TEXT NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS tree_heads (
    size INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    time TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    frontier TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    entry_id INTEGER PRIMARY KEY,
    receipt TEXT NOT NULL
);
-- a Flower receipt finds its entry by the instruction id in the summary (entry_for_message);
-- guarded so that a summary edited into bad JSON still reaches verify() instead of failing here
CREATE INDEX IF NOT EXISTS entries_by_message ON entries (channel, {_MESSAGE_ID});
"""
# Guards against our own code editing history; an attacker can drop them, verify() is the proof.
_TRIGGERS = "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;\n"
    for table in ("entries", "tree_heads", "receipts")
    for op in ("UPDATE", "DELETE")
)


class AuditError(NexusError):
    """The audit log is missing, unreadable or cannot take an entry."""


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Entry:
    id: int
    time: str
    event: str
    channel: str
    destination: str
    kind: str
    bytes: int
    sha256: str
    summary_json: str
    reason: str | None

    @property
    def summary(self) -> dict[str, Any]:
        # A tampered summary must not crash the report; verify() names the entry anyway.
        try:
            value = json.loads(self.summary_json)
        except ValueError:
            value = None
        return value if isinstance(value, dict) else {"unreadable": str(self.summary_json)}

    def canonical(self) -> builtins.bytes:  # builtins: the field ``bytes`` shadows the type here
        # The summary is hashed as stored text, so even a re-spaced equivalent JSON is a change.
        fields = {
            "id": self.id,
            "time": self.time,
            "event": self.event,
            "channel": self.channel,
            "destination": self.destination,
            "kind": self.kind,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "summary": self.summary_json,
            "reason": self.reason,
        }
        return canonical_json(fields).encode("utf-8")

    def leaf_hash(self) -> builtins.bytes:
        return leaf_hash(self.canonical())


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: str
    time: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        return tree_head_message(self.size, self.root, self.time, self.key_id)

    def verifies(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), self.message())
        except (InvalidSignature, ValueError):
            return False
        return True


def load_tree_head(path: Path) -> TreeHead:
    """A signed tree head held elsewhere, from a JSON file: a bare head (the hub's copy) or
    a report holding one under ``tree_head`` (``nexus audit report --format json``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuditError(f"cannot read tree head {path} ({exc.strerror})") from None
    except ValueError as exc:
        raise AuditError(f"{path} is not JSON ({exc})") from None
    if isinstance(data, dict) and "tree_head" in data:
        data = data["tree_head"]
    types = {"size": int, "root": str, "time": str, "key_id": str, "signature": str}
    if (
        not isinstance(data, dict)
        or any(type(data.get(name)) is not kind for name, kind in types.items())
        or data["size"] < 1
    ):
        raise AuditError(f"{path} holds no signed tree head {{size, root, time, key_id, signature}}")
    return TreeHead(**{name: data[name] for name in types})


@dataclass(frozen=True)
class InclusionProof:
    entry_id: int
    leaf_hash: str
    size: int
    root: str
    path: list[str]

    def verifies(self) -> bool:
        return verify_inclusion(
            bytes.fromhex(self.leaf_hash),
            self.entry_id - 1,
            self.size,
            [bytes.fromhex(p) for p in self.path],
            bytes.fromhex(self.root),
        )


# ---------------------------------------------------------------- hub receipts


def check_receipt(entry: Entry, receipt: Mapping[str, Any], hub_key: Ed25519PublicKey | None) -> str | None:
    """Why ``receipt`` does not prove the hub got exactly ``entry``'s bytes, or None."""
    if entry.event != SEND:
        return f"receipt attached to a {entry.event} entry"
    if hub_key is None:
        return "receipt cannot be checked: no hub key pinned"
    if receipt.get("sha256") != entry.sha256 or receipt.get("bytes") != entry.bytes:
        return "receipt sha256/bytes do not match the entry"
    if not signature_verifies(receipt, hub_key):
        return "receipt signature does not verify against the pinned hub key"
    return None


# ---------------------------------------------------------------- the log


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        row["id"],
        row["time"],
        row["event"],
        row["channel"],
        row["destination"],
        row["kind"],
        row["bytes"],
        row["sha256"],
        row["summary"],
        row["reason"],
    )


def _head(row: sqlite3.Row) -> TreeHead:
    return TreeHead(row["size"], row["root"], row["time"], row["key_id"], row["signature"])


class AuditLog:
    """Append side of the log. Safe across threads and processes (uvicorn workers, Flower's
    ClientApp processes): each append is one ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, data_dir: Path, key: Ed25519PrivateKey | Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        layout = EdgeDataDir(self.data_dir)
        self._key = key if isinstance(key, Ed25519PrivateKey) else load_or_create_key(Path(key or layout.audit_key))
        self.key_id = key_id(self._key.public_key())
        self._salt = read_or_create(layout.audit_salt, lambda: os.urandom(32))
        self._lock = threading.Lock()
        self._conn = _connect(layout.audit_db)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA + _TRIGGERS)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def pinned_hub_key(self) -> str | None:
        """The newest pinned hub key (raw base64), None before the first pin."""
        with self._lock:
            row = self._conn.execute(
                "SELECT summary FROM entries WHERE event = ? ORDER BY id DESC LIMIT 1", (HUB_KEY,)
            ).fetchone()
        key = None if row is None else hub_key_from_summary(row["summary"])
        return None if key is None else public_key_b64(key)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- appends

    def record_send(self, channel: str, destination: str, kind: str, body: bytes, summary: Mapping[str, Any]) -> Entry:
        """Call *before* sending ``body``; keep the entry's id for :meth:`attach_receipt`."""
        return self._append(
            SEND, channel, destination, kind, len(body), hashlib.sha256(body).hexdigest(), summary, None
        )

    def record_refusal(
        self,
        channel: str,
        destination: str,
        kind: str,
        reason: str,
        body: bytes = b"",
        summary: Mapping[str, Any] | None = None,
    ) -> Entry:
        digest = hashlib.sha256(body).hexdigest() if body else ""
        return self._append(REFUSAL, channel, destination, kind, len(body), digest, summary or {}, reason)

    def record_erasure(self, visitor_id: str, rows: Mapping[str, int]) -> Entry:
        summary = {"visitor": self.visitor_digest(visitor_id), "rows": dict(rows)}
        return self._append(ERASURE, "local", "local-store", "visitor-erasure", 0, "", summary, None)

    def record_retention(self, cutoff: float, retention_days: float, rows: Mapping[str, int]) -> Entry:
        summary = {
            "cutoff": datetime.fromtimestamp(cutoff, UTC).isoformat().replace("+00:00", "Z"),
            "retention_days": retention_days,
            "rows": dict(rows),
        }
        return self._append(RETENTION, "local", "local-store", "retention-run", 0, "", summary, None)

    def pin_hub_key(self, hub_key: Ed25519PublicKey, destination: str) -> Entry:
        """Receipts from entries after this one are checked against ``hub_key``."""
        summary = {"public_key": public_key_b64(hub_key), "key_id": key_id(hub_key)}
        return self._append(HUB_KEY, "local", destination, "hub-key", 0, "", summary, None)

    def visitor_digest(self, visitor_id: str) -> str:
        """Keyed hash of a visitor id: an officer holding the salt can check a given id was
        erased; the log alone never reveals it."""
        return hmac.new(self._salt, visitor_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def attach_receipt(self, entry_id: int, receipt: Mapping[str, Any]) -> str | None:
        """Store the hub's receipt beside its entry (it is kept even when it does not
        verify: it is evidence). Returns why it does not verify, or None."""
        text = canonical_json(dict(receipt))
        with self._lock:
            row = self._conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
            if row is None or row["event"] != SEND:
                raise AuditError(f"no audit entry {entry_id} of a send to attach a receipt to")
            try:
                self._conn.execute("INSERT INTO receipts (entry_id, receipt) VALUES (?, ?)", (entry_id, text))
            except sqlite3.IntegrityError:
                raise AuditError(f"audit entry {entry_id} already has a receipt") from None
            hub_key = _pinned_hub_key(self._conn, entry_id)
        return check_receipt(_entry(row), receipt, hub_key)

    def entry_for_message(self, channel: str, message_id: str) -> int | None:
        """The newest send on ``channel`` whose summary names ``message_id`` (how a Flower
        receipt, which arrives later and on its own, finds its entry)."""
        if not message_id:
            return None
        with self._lock:
            row = self._conn.execute(
                f"SELECT id FROM entries WHERE event = ? AND channel = ? AND {_MESSAGE_ID} = ? "
                "ORDER BY id DESC LIMIT 1",
                (SEND, channel, message_id),
            ).fetchone()
        return None if row is None else int(row["id"])

    def _append(
        self,
        event: str,
        channel: str,
        destination: str,
        kind: str,
        nbytes: int,
        sha256: str,
        summary: Mapping[str, Any],
        reason: str | None,
    ) -> Entry:
        try:
            summary_json = canonical_json(dict(summary))
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit summary must be plain JSON ({exc})") from None
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                last = self._conn.execute("SELECT size, frontier FROM tree_heads ORDER BY size DESC LIMIT 1").fetchone()
                size = last["size"] if last else 0
                frontier: Frontier = [(h, bytes.fromhex(x)) for h, x in json.loads(last["frontier"])] if last else []
                entry = Entry(
                    size + 1, utc_now(), event, channel, destination, kind, nbytes, sha256, summary_json, reason
                )
                self._conn.execute(
                    "INSERT INTO entries (id, time, event, channel, destination, kind, bytes, sha256, summary, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.id, entry.time, event, channel, destination, kind, nbytes, sha256, summary_json, reason),
                )
                frontier = extend_frontier(frontier, entry.leaf_hash())
                head = TreeHead(entry.id, frontier_root(frontier).hex(), entry.time, self.key_id, "")
                signature = base64.b64encode(self._key.sign(head.message())).decode()
                self._conn.execute(
                    "INSERT INTO tree_heads (size, root, time, key_id, signature, frontier) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        head.size,
                        head.root,
                        head.time,
                        head.key_id,
                        signature,
                        json.dumps([[h, x.hex()] for h, x in frontier]),
                    ),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return entry

    # -- reads

    def totals(self) -> tuple[int, int]:
        """``(entries, bytes sent)``: one aggregate query, cheap enough for every heartbeat."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN event = ? THEN bytes END), 0) AS sent FROM entries",
                (SEND,),
            ).fetchone()
        return int(row["n"]), int(row["sent"])

    def tree_head(self) -> TreeHead | None:
        """The newest signed tree head (send it to the hub so truncation becomes visible)."""
        return AuditReader(self.data_dir).tree_head()

    def inclusion_proof(self, entry_id: int, size: int | None = None) -> InclusionProof:
        return AuditReader(self.data_dir).inclusion_proof(entry_id, size)


def _pinned_hub_key(conn: sqlite3.Connection, before_entry: int) -> Ed25519PublicKey | None:
    """The newest key pinned before the entry; before the first pin, the first one: the
    enrollment reply carries the key its own receipt is signed with (trust on first use)."""
    row = (
        conn.execute(
            "SELECT summary FROM entries WHERE event = ? AND id < ? ORDER BY id DESC LIMIT 1", (HUB_KEY, before_entry)
        ).fetchone()
        or conn.execute("SELECT summary FROM entries WHERE event = ? ORDER BY id LIMIT 1", (HUB_KEY,)).fetchone()
    )
    return None if row is None else hub_key_from_summary(row["summary"])


def hub_key_from_summary(summary_json: str) -> Ed25519PublicKey | None:
    try:
        return public_key_from_b64(json.loads(summary_json)["public_key"])
    except (ValueError, KeyError, TypeError):
        return None


class AuditReader:
    """Read side (report, verify, CLI): never creates keys or tables."""

    def __init__(self, data_dir: Path) -> None:
        path = EdgeDataDir(Path(data_dir)).audit_db
        if not path.is_file():
            raise AuditError(f"no audit log in {data_dir} (expected {path.name})")
        self.data_dir = Path(data_dir)
        self._path = path

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        conn = _connect(self._path)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"cannot read the audit log {self._path} ({exc})") from None
        finally:
            conn.close()

    def entries(self, event: str | None = None) -> Iterator[Entry]:
        if event is None:
            rows = self._query("SELECT * FROM entries ORDER BY id")
        else:
            rows = self._query("SELECT * FROM entries WHERE event = ? ORDER BY id", (event,))
        return map(_entry, rows)

    def tree_heads(self) -> dict[int, TreeHead]:
        return {row["size"]: _head(row) for row in self._query("SELECT * FROM tree_heads")}

    def tree_head(self) -> TreeHead | None:
        rows = self._query("SELECT * FROM tree_heads ORDER BY size DESC LIMIT 1")
        return _head(rows[0]) if rows else None

    def receipts(self) -> dict[int, str]:
        return {row["entry_id"]: row["receipt"] for row in self._query("SELECT * FROM receipts")}

    def snapshot(self) -> tuple[list[Entry], dict[int, TreeHead], dict[int, str]]:
        """Entries, tree heads and receipts as of one moment. A running node appends while it
        is read; separate reads could see a head whose entry they missed."""
        conn = _connect(self._path)
        try:
            conn.execute("BEGIN")  # one read transaction: WAL serves every SELECT from one snapshot
            entries = [_entry(row) for row in conn.execute("SELECT * FROM entries ORDER BY id")]
            heads = {row["size"]: _head(row) for row in conn.execute("SELECT * FROM tree_heads")}
            receipts = {row["entry_id"]: row["receipt"] for row in conn.execute("SELECT * FROM receipts")}
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"cannot read the audit log {self._path} ({exc})") from None
        finally:
            conn.close()
        return entries, heads, receipts

    def inclusion_proof(self, entry_id: int, size: int | None = None) -> InclusionProof:
        leaves = [entry.leaf_hash() for entry in self.entries()]
        size = len(leaves) if size is None else size
        if not 1 <= entry_id <= size <= len(leaves):
            raise AuditError(f"entry {entry_id} is not in a tree of size {size} (the log holds {len(leaves)})")
        path = inclusion_path(leaves[:size], entry_id - 1)
        return InclusionProof(
            entry_id, leaves[entry_id - 1].hex(), size, tree_root(leaves[:size]).hex(), [p.hex() for p in path]
        )
