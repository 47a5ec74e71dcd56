"""The node's tamper-evident audit log: every byte that leaves it, every refusal, erasure
and retention run.

Storage is an append-only SQLite table (WAL) in the data dir. Entries are the leaves of an
RFC 6962 Merkle tree (leaf = SHA-256(0x00 || canonical entry), node = SHA-256(0x01 || l || r)).
After *every* append the node signs a tree head (size, root, time) with its own Ed25519
key, so ``verify`` (verify.py) can name the exact first entry that was changed, reordered or
deleted: entry ``n`` is the one whose head ``n`` no longer matches. Deleting the newest
entries together with their heads is only visible against a tree head held elsewhere
(the hub's copy, see docs/privacy.md).

Hub receipts (the hub's Ed25519 signature over the node, request and body digest it
received, nexus_wire/heads.py) are stored beside their entry, outside the tree: they arrive
after the entry was signed. One that does not match its entry is refused (a ``refusal``
entry) instead of stored, so every stored receipt must verify.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import itertools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_worker.audit import tree
from models.errors import NexusError
from nexus_service.keyfiles import (
    load_or_create_key,
    private_file,
    public_key_b64,
    public_key_from_b64,
    read_or_create,
)
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import (
    LEGACY_RECEIPT_FORMAT,
    binding_problem,
    canonical_json,
    flower_binding,
    http_binding,
    key_id,
    legacy_problem,
    receipt_format,
    signature_verifies,
    tree_head_message,
    utc_now,
)
from nexus_wire.merkle import (
    Frontier,
    Subtree,
    consistency_subtrees,
    extend,
    frontier_root,
    inclusion_subtrees,
    leaf_hash,
    resolve,
    subtree_hashes,
    verify_consistency,
    verify_inclusion,
)
from nexus_wire.payloads import FLOWER_CHANNEL, HUB_RECEIPT

T = TypeVar("T")
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
{tree.SCHEMA}"""
# Guards against our own code editing history; an attacker can drop them, verify() is the proof.
_TRIGGERS = "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;\n"
    for table in ("entries", "tree_heads", "receipts", tree.TABLE)
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


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 6962 PROOF(first.size, D[second.size]) between two of the log's signed heads."""

    first: TreeHead
    second: TreeHead
    proof: list[str]

    def verifies(self) -> bool:
        return verify_consistency(
            self.first.size,
            self.second.size,
            bytes.fromhex(self.first.root),
            bytes.fromhex(self.second.root),
            [bytes.fromhex(p) for p in self.proof],
        )

    def as_dict(self) -> dict[str, Any]:
        return {"first": asdict(self.first), "second": asdict(self.second), "proof": list(self.proof)}


# ---------------------------------------------------------------- hub receipts


def expected_binding(entry: Entry, node: str | None = None) -> dict[str, Any]:
    """What a receipt for ``entry`` must bind, from what the entry recorded as it was sent: the
    node (``node`` where the entry could not record it; neither: not compared), the request
    (HTTP: ``request`` "METHOD target"; Flower: the message type and instruction id) and the
    body digest."""
    summary = entry.summary
    sent_as = summary.get("node", node)
    if entry.channel == FLOWER_CHANNEL:
        message_type, message = str(summary.get("message_type", "")), str(summary.get("message", ""))
        return flower_binding(sent_as, message_type, message, entry.sha256, entry.bytes)
    method, _, target = str(summary.get("request", "")).partition(" ")
    return http_binding(sent_as, method, target, entry.sha256, entry.bytes)


def check_receipt(
    entry: Entry, receipt: Mapping[str, Any], hub_key: Ed25519PublicKey | None, node: str | None = None
) -> str | None:
    """Why ``receipt`` does not prove the hub got exactly ``entry``'s request from this node,
    or None: it must bind what :func:`expected_binding` finds, with the pinned hub key's
    signature. An unbound receipt of the old format passes on its body digest, but only on an
    entry that recorded no node: one written before bound receipts existed."""
    if entry.event != SEND:
        return f"receipt attached to a {entry.event} entry"
    if hub_key is None:
        return "receipt cannot be checked: no hub key pinned"
    if receipt_format(receipt) == LEGACY_RECEIPT_FORMAT:
        if "node" in entry.summary:
            return f"unbound {LEGACY_RECEIPT_FORMAT} receipt on an entry sent as a node"
        problem = legacy_problem(receipt, entry.sha256, entry.bytes)
    else:
        problem = binding_problem(receipt, expected_binding(entry, node))
    if problem:
        return problem
    if not signature_verifies(receipt, hub_key):
        return "receipt signature does not verify against the pinned hub key"
    return None


# ---------------------------------------------------------------- the log


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(private_file(path), isolation_level=None, timeout=30, check_same_thread=False)
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


def _size(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(id) FROM entries").fetchone()
    return int(row[0] or 0)


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
        self._store_subtrees()

    def _store_subtrees(self) -> None:
        """Bring the stored subtrees up to the entries: all of them the first time a log
        written before they existed is opened, none otherwise (one indexed read each)."""
        conn = self._conn
        if tree.leaves_stored(conn) >= _size(conn):
            return
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                have = tree.leaves_stored(conn)  # another process may have filled them meanwhile
                rows = conn.execute("SELECT * FROM entries WHERE id > ? ORDER BY id", (have,))
                # up to the first gap: a log with a missing entry is verify()'s to report, not ours to index
                numbered = enumerate(map(_entry, rows), start=have + 1)
                contiguous = itertools.takewhile(lambda pair: pair[1].id == pair[0], numbered)
                tree.fill(conn, have, (entry.leaf_hash() for _, entry in contiguous))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

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

    def attach_receipt(self, entry_id: int, receipt: Mapping[str, Any], node: str | None = None) -> str | None:
        """Check the hub's receipt for a send (:func:`check_receipt`) and store it beside the
        entry. One that does not match (another node, request or body, a bad signature, the
        old unbound format) is refused instead: not stored, and a ``refusal`` entry (kind
        ``hub-receipt``) names the entry, the receipt's sha256 and why, so a bad receipt
        neither passes for proof nor makes the log fail ``verify``. One that cannot be
        checked yet (no hub key pinned) is stored, for an officer who holds the key.
        ``node``: the node id the request went out as, where the entry could not record it
        (enrollment: the reply assigns it). Returns why the receipt is no proof, or None."""
        try:
            text: str | None = canonical_json(dict(receipt))
        except (TypeError, ValueError):
            text = None
        with self._lock:
            row = self._conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
            if row is None or row["event"] != SEND:
                raise AuditError(f"no audit entry {entry_id} of a send to attach a receipt to")
            entry = _entry(row)
            hub_key = _pinned_hub_key(self._conn, entry_id)
            problem = "receipt is not plain JSON" if text is None else check_receipt(entry, receipt, hub_key, node)
            if receipt_format(receipt) == LEGACY_RECEIPT_FORMAT and problem is None:
                problem = f"receipt is in the unbound {LEGACY_RECEIPT_FORMAT} format"  # only old logs hold those
            if text is not None and (problem is None or hub_key is None):
                try:
                    self._conn.execute("INSERT INTO receipts (entry_id, receipt) VALUES (?, ?)", (entry_id, text))
                except sqlite3.IntegrityError:
                    raise AuditError(f"audit entry {entry_id} already has a receipt") from None
                return problem
        digest = hashlib.sha256((text or repr(receipt)).encode("utf-8")).hexdigest()
        summary = {"entry": entry_id, "receipt_sha256": digest}
        self.record_refusal(entry.channel, entry.destination, HUB_RECEIPT, str(problem), summary=summary)
        return problem

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
                frontier: Frontier = tree.parse_frontier(last["frontier"]) if last else []
                entry = Entry(
                    size + 1, utc_now(), event, channel, destination, kind, nbytes, sha256, summary_json, reason
                )
                self._conn.execute(
                    "INSERT INTO entries (id, time, event, channel, destination, kind, bytes, sha256, summary, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.id, entry.time, event, channel, destination, kind, nbytes, sha256, summary_json, reason),
                )
                frontier, completed = extend(frontier, entry.leaf_hash())
                tree.record(self._conn, entry.id, completed)
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
                        tree.frontier_text(frontier),
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
        with self._lock:
            return _inclusion_proof(self._conn, entry_id, size, stored=True)

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        """From the head of size ``first`` to the one of ``second`` (default: the newest); on the
        node's own connection, as every heartbeat asks for one."""
        with self._lock:
            return _consistency_proof(self._conn, first, second, stored=True)


# ---------------------------------------------------------------- proofs


def _newest(conn: sqlite3.Connection) -> TreeHead | None:
    row = conn.execute("SELECT * FROM tree_heads ORDER BY size DESC LIMIT 1").fetchone()
    return None if row is None else _head(row)


def _signed_heads(conn: sqlite3.Connection, first: int, second: int | None, what: str) -> tuple[TreeHead, TreeHead]:
    """The signed heads of sizes ``first`` and ``second`` (None: the newest), 1 <= first <= second."""
    newest = _newest(conn) if second is None else None
    size = newest.size if newest is not None else (second or 0)
    if not 1 <= first <= size:
        raise AuditError(f"no {what} from size {first} to size {size}: it needs 1 <= first <= second")
    heads = {
        row["size"]: _head(row) for row in conn.execute("SELECT * FROM tree_heads WHERE size IN (?, ?)", (first, size))
    }
    for wanted in (first, size):
        if wanted not in heads:
            held = _newest(conn)
            raise AuditError(
                f"no signed tree head of size {wanted} for {what} (the log holds {0 if held is None else held.size})"
            )
    return heads[first], heads[size]


def _resolve(conn: sqlite3.Connection, plan: list[list[Subtree]], stored: bool | None) -> list[str]:
    """The proof's hashes from the stored subtrees (``stored`` None: look whether the log has
    them); a log no new version has opened yet is hashed whole instead."""
    try:
        if tree.stored(conn) if stored is None else stored:
            subtree = tree.fetch(conn, (node for nodes in plan for node in nodes))
        else:
            rows = conn.execute("SELECT * FROM entries ORDER BY id")
            subtree = subtree_hashes([_entry(row).leaf_hash() for row in rows])
        return [digest.hex() for digest in resolve(plan, subtree)]
    except (tree.MissingSubtree, IndexError) as exc:
        raise AuditError(f"cannot build the proof: {exc or 'the log lacks entries'} (run nexus audit verify)") from None


def _inclusion_proof(conn: sqlite3.Connection, entry_id: int, size: int | None, stored: bool | None) -> InclusionProof:
    _, head = _signed_heads(conn, 1, size, "inclusion proof")
    row = conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
    if row is None or not 1 <= entry_id <= head.size:
        raise AuditError(f"entry {entry_id} is not in a tree of size {head.size}")
    path = _resolve(conn, inclusion_subtrees(entry_id - 1, head.size), stored)
    return InclusionProof(entry_id, _entry(row).leaf_hash().hex(), head.size, head.root, path)


def _consistency_proof(
    conn: sqlite3.Connection, first: int, second: int | None, stored: bool | None
) -> ConsistencyProof:
    old, new = _signed_heads(conn, first, second, "consistency proof")
    proof = [] if old.size == new.size else _resolve(conn, consistency_subtrees(old.size, new.size), stored)
    return ConsistencyProof(old, new, proof)


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

    def snapshot(self) -> Snapshot:
        """Every stored row as of one moment. A running node appends while it is read;
        separate reads could see a head whose entry they missed."""
        conn = _connect(self._path)
        try:
            conn.execute("BEGIN")  # one read transaction: WAL serves every SELECT from one snapshot
            entries = [_entry(row) for row in conn.execute("SELECT * FROM entries ORDER BY id")]
            rows = conn.execute("SELECT * FROM tree_heads").fetchall()
            receipts = {row["entry_id"]: row["receipt"] for row in conn.execute("SELECT * FROM receipts")}
            subtrees = (
                {(row[0], row[1]): row[2] for row in conn.execute(f"SELECT level, idx, hash FROM {tree.TABLE}")}
                if tree.stored(conn)
                else None
            )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"cannot read the audit log {self._path} ({exc})") from None
        finally:
            conn.close()
        heads = {row["size"]: _head(row) for row in rows}
        return Snapshot(entries, heads, receipts, {row["size"]: row["frontier"] for row in rows}, subtrees)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = _connect(self._path)
        try:
            return work(conn)
        except sqlite3.DatabaseError as exc:
            raise AuditError(f"cannot read the audit log {self._path} ({exc})") from None
        finally:
            conn.close()

    def inclusion_proof(self, entry_id: int, size: int | None = None) -> InclusionProof:
        return self._read(lambda conn: _inclusion_proof(conn, entry_id, size, stored=None))

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        return self._read(lambda conn: _consistency_proof(conn, first, second, stored=None))


@dataclass(frozen=True)
class Snapshot:
    """Every stored column of the log at one moment (what verify() checks)."""

    entries: list[Entry]
    heads: dict[int, TreeHead]
    receipts: dict[int, str]
    #: size -> the tree head's stored ``frontier`` column
    frontiers: dict[int, str]
    #: (level, index) -> hex hash; None for a log written before subtrees were stored
    subtrees: dict[Subtree, str] | None
