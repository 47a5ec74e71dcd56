"""Verification of a whole audit log: every stored column (entries, signed tree heads and
their frontiers, the stored subtree hashes, hub receipts), in entry order, naming the first
entry that fails; and the consistency of a tree head held elsewhere with the log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_worker.audit import tree
from edge_worker.audit.log import (
    HUB_KEY,
    AuditError,
    AuditReader,
    Snapshot,
    TreeHead,
    check_receipt,
    hub_key_from_summary,
)
from nexus_service.keyfiles import KeyFileError, load_public_key
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import key_id
from nexus_wire.merkle import (
    Frontier,
    Subtree,
    consistency_subtrees,
    extend,
    frontier_root,
    resolve,
    verify_consistency,
)


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
    log must still hold its entries, and an RFC 6962 consistency proof from it to the whole
    log must verify. That catches the newest entries removed together with their own heads,
    and a log rewritten under the node's key and grown past the held head."""
    reader = AuditReader(data_dir)
    if node_key is None:
        try:
            node_key = load_public_key(EdgeDataDir(Path(data_dir)).audit_key)
        except KeyFileError as exc:
            raise AuditError(str(exc)) from None  # a log without its key cannot be verified
    snapshot = reader.snapshot()
    entries, heads, receipts = snapshot.entries, snapshot.heads, snapshot.receipts

    def bad(entry_id: int | None, reason: str) -> Verification:
        return Verification(False, len(entries), len(heads), len(receipts), None, key_id(node_key), entry_id, reason)

    if held_head is not None and not held_head.verifies(node_key):
        return bad(
            None,
            f"the tree head held elsewhere (size {held_head.size}, key {held_head.key_id}) does not verify against "
            f"the node key {key_id(node_key)}: forged, or the log was re-signed under another key",
        )
    frontier: Frontier = []
    computed: dict[Subtree, bytes] = {}  # every complete subtree, as the entries give it
    # before the first pin, receipts are checked against it (see log._pinned_hub_key)
    first_pin = next((e for e in entries if e.event == HUB_KEY), None)
    pinned = hub_key or (None if first_pin is None else hub_key_from_summary(first_pin.summary_json))
    for expected, entry in enumerate(entries, start=1):
        if entry.id != expected:
            return bad(expected, f"entry missing (ids jump from {expected - 1} to {entry.id})")
        frontier, completed = extend(frontier, entry.leaf_hash())
        computed.update(((level, (expected >> level) - 1), digest) for level, digest in completed)
        head = heads.get(expected)
        if head is None:
            return bad(expected, "no signed tree head for this entry (tree head deleted)")
        if not head.verifies(node_key):
            return bad(expected, "tree head signature does not verify against the node key")
        if head.root != frontier_root(frontier).hex():
            return bad(expected, "entry does not match its signed tree head (changed, reordered or replaced)")
        problem = _stored_tree_problem(snapshot, expected, frontier, completed)
        if problem:
            return bad(expected, problem)
        if entry.event == HUB_KEY and hub_key is None:
            pinned = hub_key_from_summary(entry.summary_json)
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
    extra = [] if snapshot.subtrees is None else [node for node in snapshot.subtrees if node not in computed]
    if extra:
        covered = max((index + 1) << level for level, index in extra)
        if covered > n:
            return bad(n + 1, f"entry missing: stored subtree hashes cover {covered} entries, the log holds {n}")
        return bad(None, f"the subtrees table holds {len(extra)} hashes no entry gives (rows added)")
    if held_head is not None and not _consistent(held_head, heads[n] if n else None, computed):
        return bad(
            held_head.size,
            f"the log is not consistent with the tree head held elsewhere (size {held_head.size}, root "
            f"{held_head.root[:12]}…): no consistency proof from it to the {n} entries the log holds verifies "
            "(rewritten)",
        )
    return Verification(
        True, n, len(heads), len(receipts), frontier_root(frontier).hex() if n else None, key_id(node_key)
    )


def _stored_tree_problem(
    snapshot: Snapshot, size: int, frontier: Frontier, completed: list[tuple[int, bytes]]
) -> str | None:
    """Whether the columns derived from the entries up to ``size`` match them: the head's
    frontier (what the next append extends) and the subtrees this entry completed."""
    try:
        stored_frontier = tree.parse_frontier(snapshot.frontiers[size])
    except (ValueError, TypeError, KeyError):
        stored_frontier = None
    if stored_frontier != frontier:
        return "the tree head's stored frontier does not match the entries (frontier column changed)"
    if snapshot.subtrees is None:  # written before subtrees were stored: nothing more to compare
        return None
    for level, digest in completed:
        node = (level, (size >> level) - 1)
        if snapshot.subtrees.get(node) != digest.hex():
            what = "missing" if node not in snapshot.subtrees else "does not match the entries"
            return f"the stored hash of subtree {node} (level, index) {what} (subtrees table changed)"
    return None


def _consistent(held: TreeHead, newest: TreeHead | None, computed: dict[Subtree, bytes]) -> bool:
    """The consistency proof the node serves (its subtrees are checked equal to ``computed``)
    from the held head to the newest one verifies."""
    if newest is None or held.size > newest.size:
        return False
    plan = consistency_subtrees(held.size, newest.size) if held.size < newest.size else []
    proof = resolve(plan, computed.__getitem__)
    try:
        first_root = bytes.fromhex(held.root)
    except ValueError:
        return False
    return verify_consistency(held.size, newest.size, first_root, bytes.fromhex(newest.root), proof)
