"""The node's tamper-evident audit log: every byte that leaves it, every refusal, erasure
and retention run.

Storage is an append-only SQLite table (WAL) in the data dir. Entries are the leaves of an
RFC 6962 Merkle tree (leaf = SHA-256(0x00 || canonical entry), node = SHA-256(0x01 || l || r)).
After *every* append the node signs a tree head (size, root, time) with its own Ed25519
key, so :func:`verify` can name the exact first entry that was changed, reordered or
deleted: entry ``n`` is the one whose head ``n`` no longer matches. Deleting the newest
entries together with their heads is only visible against a tree head held elsewhere
(the hub's copy, see docs/privacy.md).

Hub receipts (an Ed25519 signature over the sha256, bytes and time the hub received) are
stored beside their entry, outside the tree: they arrive after the entry was signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.bundle import key_id
from models.errors import NexusError

# canonical_json, sign_receipt and utc_now are also used from here by the log's tools and tests
from models.receipts import canonical_json, sign_receipt, signature_verifies, utc_now  # noqa: F401

DB_NAME = "audit.sqlite3"
KEY_FILE = "node-audit-key.pem"
SALT_FILE = "audit-salt"
OPERATOR_TOKEN_FILE = "operator.token"
TREE_HEAD_FORMAT = "nexus-audit-sth/1"

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


# ---------------------------------------------------------------- RFC 6962 Merkle tree


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


Frontier = list[tuple[int, bytes]]  # (height, root) of the perfect subtrees, largest first


def extend_frontier(frontier: Frontier, leaf: bytes) -> Frontier:
    out = [*frontier, (0, leaf)]
    while len(out) >= 2 and out[-1][0] == out[-2][0]:
        (height, left), (_, right) = out[-2], out[-1]
        out[-2:] = [(height + 1, node_hash(left, right))]
    return out


def frontier_root(frontier: Frontier) -> bytes:
    """RFC 6962 MTH: the split point is the largest power of two below n, so folding the
    perfect subtrees from the right gives exactly the recursive definition."""
    if not frontier:
        return hashlib.sha256(b"").digest()
    root = frontier[-1][1]
    for _, subtree in reversed(frontier[:-1]):
        root = node_hash(subtree, root)
    return root


def _mth(leaves: list[bytes]) -> bytes:
    frontier: Frontier = []
    for leaf in leaves:
        frontier = extend_frontier(frontier, leaf)
    return frontier_root(frontier)


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_path(leaves: list[bytes], index: int) -> list[bytes]:
    """RFC 6962 PATH(m, D[n])."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_path(leaves[:k], index) + [_mth(leaves[k:])]
    return inclusion_path(leaves[k:], index - k) + [_mth(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


# ---------------------------------------------------------------- keys and secrets


def _read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """A secret file, 0600 from its first byte; ``O_EXCL`` makes concurrent first uses agree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(make())
    return path.read_bytes()


def load_or_create_operator_token(data_dir: Path) -> str:
    """The edge's operator token (``Authorization: Bearer`` for ``GET /v1/privacy/audit``),
    created on first start, 0600, never logged."""
    return (
        _read_or_create(Path(data_dir) / OPERATOR_TOKEN_FILE, lambda: secrets.token_urlsafe(32).encode())
        .decode()
        .strip()
    )


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    def make() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    key = serialization.load_pem_private_key(_read_or_create(Path(path), make), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public half of a PEM private key file, or a PEM / raw-base64 public key file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read key {path} ({exc.strerror})") from None
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        elif b"PUBLIC KEY" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip(), validate=True))
    except ValueError as exc:
        raise AuditError(f"{path} is not an Ed25519 key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} is not an Ed25519 key")
    return key


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes_raw()).decode()


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

    def canonical(self) -> bytes:
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

    def leaf_hash(self) -> bytes:
        return leaf_hash(self.canonical())


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: str
    time: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        body = {
            "format": TREE_HEAD_FORMAT,
            "size": self.size,
            "root": self.root,
            "time": self.time,
            "key_id": self.key_id,
        }
        return canonical_json(body).encode("utf-8")

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
        self._key = (
            key if isinstance(key, Ed25519PrivateKey) else load_or_create_key(Path(key or self.data_dir / KEY_FILE))
        )
        self.key_id = key_id(self._key.public_key())
        self._salt = _read_or_create(self.data_dir / SALT_FILE, lambda: os.urandom(32))
        self._lock = threading.Lock()
        self._conn = _connect(self.data_dir / DB_NAME)
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
        key = None if row is None else _hub_key_from_summary(row["summary"])
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
                f"SELECT id FROM entries WHERE event = ? AND channel = ? AND {_MESSAGE_ID} = ? ORDER BY id DESC LIMIT 1",
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
    return None if row is None else _hub_key_from_summary(row["summary"])


def _hub_key_from_summary(summary_json: str) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(
            base64.b64decode(json.loads(summary_json)["public_key"], validate=True)
        )
    except (ValueError, KeyError, TypeError):
        return None


class AuditReader:
    """Read side (report, verify, CLI): never creates keys or tables."""

    def __init__(self, data_dir: Path) -> None:
        path = Path(data_dir) / DB_NAME
        if not path.is_file():
            raise AuditError(f"no audit log in {data_dir} (expected {DB_NAME})")
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
            entry_id, leaves[entry_id - 1].hex(), size, _mth(leaves[:size]).hex(), [p.hex() for p in path]
        )


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    tree_heads: int
    receipts: int
    root: str | None
    node_key_id: str
    first_bad: int | None = None
    reason: str | None = None

    def message(self) -> str:
        if self.ok:
            return (
                f"audit log intact: {self.entries} entries, {self.tree_heads} signed tree heads, "
                f"{self.receipts} receipts, root {self.root}"
            )
        where = "" if self.first_bad is None else f"entry {self.first_bad}: "
        return f"audit log NOT intact: {where}{self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "tree_heads": self.tree_heads,
            "receipts": self.receipts,
            "root": self.root,
            "node_key_id": self.node_key_id,
            "first_bad_entry": self.first_bad,
            "reason": self.reason,
        }


def verify(
    data_dir: Path,
    node_key: Ed25519PublicKey | None = None,
    hub_key: Ed25519PublicKey | None = None,
    held_head: TreeHead | None = None,
) -> Verification:
    """Walk the whole log: every leaf, every signed tree head, every receipt, in entry
    order, and name the first entry that fails. ``node_key`` defaults to the key file in
    the data dir (an officer should hold a copy apart); ``hub_key`` overrides the pinned one.
    ``held_head`` is a signed tree head held elsewhere (a previous report, the hub's copy): the
    log must still hold its entries with its root, which catches the newest entries
    removed together with their own heads."""
    reader = AuditReader(data_dir)
    node_key = node_key or load_public_key(Path(data_dir) / KEY_FILE)
    entries, heads, receipts = reader.snapshot()

    def bad(entry_id: int | None, reason: str) -> Verification:
        return Verification(False, len(entries), len(heads), len(receipts), None, key_id(node_key), entry_id, reason)

    if held_head is not None and not held_head.verifies(node_key):
        return bad(
            None,
            f"the tree head held elsewhere (size {held_head.size}, key {held_head.key_id}) does not verify against "
            f"the node key {key_id(node_key)}: forged, or the log was re-signed under another key",
        )
    frontier: Frontier = []
    # before the first pin, receipts are checked against it (see _pinned_hub_key)
    first_pin = next((e for e in entries if e.event == HUB_KEY), None)
    pinned = hub_key or (None if first_pin is None else _hub_key_from_summary(first_pin.summary_json))
    for expected, entry in enumerate(entries, start=1):
        if entry.id != expected:
            return bad(expected, f"entry missing (ids jump from {expected - 1} to {entry.id})")
        frontier = extend_frontier(frontier, entry.leaf_hash())
        head = heads.get(expected)
        if head is None:
            return bad(expected, "no signed tree head for this entry (tree head deleted)")
        if not head.verifies(node_key):
            return bad(expected, "tree head signature does not verify against the node key")
        if head.root != frontier_root(frontier).hex():
            return bad(expected, "entry does not match its signed tree head (changed, reordered or replaced)")
        if held_head is not None and held_head.size == expected and held_head.root != head.root:
            return bad(expected, f"the log differs from a tree head held elsewhere at size {expected} (rewritten)")
        if entry.event == HUB_KEY and hub_key is None:
            pinned = _hub_key_from_summary(entry.summary_json)
        if expected in receipts:
            try:
                receipt = json.loads(receipts[expected])
            except ValueError:
                return bad(expected, "receipt is not valid JSON")
            problem = check_receipt(entry, receipt, pinned) if isinstance(receipt, dict) else "receipt is not an object"
            if problem:
                return bad(expected, problem)
    n = len(entries)
    if held_head is not None and held_head.size > n:
        return bad(
            n + 1, f"entry missing: a tree head held elsewhere covers {held_head.size} entries, the log holds {n}"
        )
    if any(size > n for size in heads):
        return bad(n + 1, f"entry missing: a signed tree head covers {max(heads)} entries, the log holds {n}")
    if any(entry_id > n or entry_id < 1 for entry_id in receipts):
        return bad(min(i for i in receipts if i > n or i < 1), "receipt for an entry that is not in the log")
    return Verification(
        True, n, len(heads), len(receipts), frontier_root(frontier).hex() if n else None, key_id(node_key)
    )
