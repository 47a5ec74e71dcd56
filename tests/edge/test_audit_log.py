"""The audit log: RFC 6962 hashing, signed tree heads, receipts, and that any direct edit of
the storage makes verify() name the edited entry."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_worker.audit import AuditError, AuditLog, AuditReader, verify
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.merkle import extend_frontier, frontier_root, inclusion_path, leaf_hash, verify_inclusion
from tests.support.audit import receipt_for, tamper

# Certificate Transparency's reference leaves and tree heads for RFC 6962 (sizes 1..8).
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PROOF_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]
HUB = "http://127.0.0.1:8700"
#: what the gateway adds to a send's summary: the request and the node it went out as
SENT = {"request": "POST /v1/nodes/me/counters", "node": "n-1"}


def test_merkle_matches_rfc6962_reference_roots_and_proofs():
    leaves = [leaf_hash(bytes.fromhex(x)) for x in CT_LEAVES]
    frontier = []
    for size, leaf in enumerate(leaves, start=1):
        frontier = extend_frontier(frontier, leaf)
        assert frontier_root(frontier).hex() == CT_ROOTS[size - 1]
    assert [p.hex() for p in inclusion_path(leaves, 0)] == CT_PROOF_0_OF_8
    for size in range(1, 9):
        root = bytes.fromhex(CT_ROOTS[size - 1])
        for index in range(size):
            path = inclusion_path(leaves[:size], index)
            assert verify_inclusion(leaves[index], index, size, path, root)
            assert not verify_inclusion(leaves[(index + 1) % 8], index, size, path, root)


@pytest.fixture
def hub_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _filled(data_dir: Path, hub_key: Ed25519PrivateKey) -> AuditLog:
    """Seven entries of every event type; sends 2 and 5 carry valid hub receipts."""
    log = AuditLog(data_dir)
    log.pin_hub_key(hub_key.public_key(), HUB)  # 1
    for i in range(2):
        body = json.dumps({"n": i}).encode()
        entry = log.record_send("sync", HUB, "counters", body, {"keys": 1, "total": i, **SENT})  # 2, 3
        if i == 0:
            assert log.attach_receipt(entry.id, receipt_for(hub_key, entry)) is None
    log.record_refusal("sync", HUB, "heartbeat", "field 'note' is not declared", b'{"note":"hi"}')  # 4
    flower = {"message_type": "train", "message": "m-1", "node": 7}  # what the audit mod records
    entry = log.record_send(
        "flower", "127.0.0.1:9092", "model-update", b"\x00" * 64, {"model": "funnel", "dp": {"epsilon": 0.5}, **flower}
    )  # 5
    assert log.attach_receipt(entry.id, receipt_for(hub_key, entry)) is None
    log.record_erasure("visitor-42", {"feedback": 2, "funnel_outcome": 1})  # 6
    log.record_retention(1_700_000_000.0, 30, {"feedback": 5})  # 7
    return log


def test_append_and_verify_intact(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    result = verify(tmp_path, log.public_key)
    assert result.ok, result.message()
    assert (result.entries, result.tree_heads, result.receipts) == (7, 7, 2)
    assert result.root == log.tree_head().root
    head = log.tree_head()
    assert head.size == 7 and head.verifies(log.public_key)
    for entry_id in range(1, 8):
        assert log.inclusion_proof(entry_id).verifies()
        if entry_id <= 4:
            assert log.inclusion_proof(entry_id, 4).verifies()
    assert stat.S_IMODE(os.stat(EdgeDataDir(tmp_path).audit_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(EdgeDataDir(tmp_path).audit_salt).st_mode) == 0o600


def test_reopening_keeps_the_key_and_extends_the_same_tree(tmp_path, hub_key):
    first = _filled(tmp_path, hub_key)
    first.close()
    second = AuditLog(tmp_path)
    assert second.key_id == first.key_id
    second.record_send("sync", HUB, "heartbeat", b"{}", {"health": "ok"})
    assert verify(tmp_path, second.public_key).ok


def test_erasure_stores_only_a_keyed_hash_of_the_visitor(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    audit_db = EdgeDataDir(tmp_path).audit_db
    raw = audit_db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob(audit_db.name + "-*"))
    assert b"visitor-42" not in raw
    erasure = next(AuditReader(tmp_path).entries("erasure"))
    assert erasure.summary["visitor"] == log.visitor_digest("visitor-42") != log.visitor_digest("visitor-43")


def test_the_log_refuses_updates_through_sqlite(tmp_path, hub_key):
    _filled(tmp_path, hub_key)
    conn = sqlite3.connect(EdgeDataDir(tmp_path).audit_db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET bytes = 0 WHERE id = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM tree_heads WHERE size = 7")
    conn.close()


FIELDS = {
    "time": "2020-01-01T00:00:00.000000Z",
    "event": "send",
    "channel": "other",
    "destination": "http://evil.example",
    "kind": "counters",
    "bytes": 999999,
    "sha256": "0" * 64,
    "summary": '{"keys":0}',
    "reason": "edited",
}


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("entry_id", [1, 4, 7])
def test_editing_any_field_of_any_entry_is_named(tmp_path, hub_key, field, entry_id):
    log = _filled(tmp_path, hub_key)
    tamper(tmp_path, (f"UPDATE entries SET {field} = ? WHERE id = ?", (FIELDS[field], entry_id)))
    result = verify(tmp_path, log.public_key)
    assert not result.ok
    assert result.first_bad == entry_id, result.message()


def test_a_respaced_but_equal_summary_is_still_a_change(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    tamper(tmp_path, ("UPDATE entries SET summary = ? WHERE id = 3", ('{"keys": 1, "total": 1}',)))
    assert verify(tmp_path, log.public_key).first_bad == 3


def test_deleting_an_entry_is_named(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    tamper(tmp_path, ("DELETE FROM entries WHERE id = 3", ()))
    result = verify(tmp_path, log.public_key)
    assert (result.ok, result.first_bad) == (False, 3) and "missing" in result.reason


def test_deleting_the_newest_entry_is_named_by_its_tree_head(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    tamper(tmp_path, ("DELETE FROM entries WHERE id = 7", ()))
    assert verify(tmp_path, log.public_key).first_bad == 7


def test_swapping_two_entries_is_named(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    conn = sqlite3.connect(EdgeDataDir(tmp_path).audit_db)
    rows = {r[0]: r[1:] for r in conn.execute("SELECT * FROM entries WHERE id IN (2, 3)")}
    conn.close()
    tamper(
        tmp_path,
        ("DELETE FROM entries WHERE id IN (2, 3)", ()),
        ("INSERT INTO entries VALUES (2, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows[3]),
        ("INSERT INTO entries VALUES (3, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows[2]),
    )
    assert verify(tmp_path, log.public_key).first_bad == 2


def test_renumbering_an_entry_is_named(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    tamper(tmp_path, ("UPDATE entries SET id = 70 WHERE id = 5", ()))
    assert verify(tmp_path, log.public_key).first_bad == 5


@pytest.mark.parametrize(
    "column, value", [("signature", "AAAA"), ("time", "2031-01-01T00:00:00Z"), ("root", "ab" * 32)]
)
def test_a_tampered_tree_head_is_named(tmp_path, hub_key, column, value):
    log = _filled(tmp_path, hub_key)
    tamper(tmp_path, (f"UPDATE tree_heads SET {column} = ? WHERE size = 4", (value,)))
    result = verify(tmp_path, log.public_key)
    assert result.first_bad == 4, result.message()


def test_a_tree_head_resigned_with_another_key_fails(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    assert verify(tmp_path, Ed25519PrivateKey.generate().public_key()).first_bad == 1
    tamper(tmp_path, ("DELETE FROM tree_heads WHERE size = 6", ()))
    result = verify(tmp_path, log.public_key)
    assert result.first_bad == 6 and "tree head" in result.reason


def test_a_receipt_with_a_wrong_hub_signature_is_refused(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    entry = log.record_send("sync", HUB, "counters", b"{}", {"keys": 0, "total": 0, **SENT})
    assert "signature" in log.attach_receipt(entry.id, receipt_for(Ed25519PrivateKey.generate(), entry))
    # not stored, so it cannot pass for proof; the refusal is on the log, which still verifies
    assert entry.id not in AuditReader(tmp_path).receipts()
    refusal = list(AuditReader(tmp_path).entries())[-1]
    assert (refusal.event, refusal.kind, refusal.summary["entry"]) == ("refusal", "hub-receipt", entry.id)
    assert verify(tmp_path, log.public_key).ok


def test_a_receipt_for_other_bytes_is_refused(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    entry = log.record_send("sync", HUB, "counters", b"{}", {"keys": 0, "total": 0, **SENT})
    assert "bytes does not match" in log.attach_receipt(entry.id, receipt_for(hub_key, entry, bytes=entry.bytes + 1))
    assert entry.id not in AuditReader(tmp_path).receipts() and verify(tmp_path, log.public_key).ok


def test_an_edited_stored_receipt_fails(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    conn = sqlite3.connect(EdgeDataDir(tmp_path).audit_db)
    receipt = json.loads(conn.execute("SELECT receipt FROM receipts WHERE entry_id = 5").fetchone()[0])
    conn.close()
    receipt["time"] = "2030-01-01T00:00:00Z"
    tamper(tmp_path, ("UPDATE receipts SET receipt = ? WHERE entry_id = 5", (json.dumps(receipt),)))
    assert verify(tmp_path, log.public_key).first_bad == 5


def test_the_first_bad_entry_is_named_when_several_are(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    tamper(
        tmp_path, ("UPDATE entries SET bytes = 1 WHERE id = 6", ()), ("UPDATE entries SET kind = 'x' WHERE id = 3", ())
    )
    assert verify(tmp_path, log.public_key).first_bad == 3


def test_receipts_need_a_pinned_hub_key(tmp_path, hub_key):
    log = AuditLog(tmp_path)
    entry = log.record_send("sync", HUB, "heartbeat", b"{}", {"health": "ok", **SENT})
    assert "no hub key" in log.attach_receipt(entry.id, receipt_for(hub_key, entry))
    assert verify(tmp_path, log.public_key).first_bad == 1
    assert verify(tmp_path, log.public_key, hub_key.public_key()).ok  # a key the officer holds


def test_errors_the_user_can_fix(tmp_path):
    with pytest.raises(AuditError, match="no audit log"):
        AuditReader(tmp_path)
    log = AuditLog(tmp_path)
    with pytest.raises(AuditError, match="no audit entry"):
        log.attach_receipt(5, {})
    refusal = log.record_refusal("sync", HUB, "heartbeat", "not declared")
    with pytest.raises(AuditError, match="of a send"):
        log.attach_receipt(refusal.id, {})
    with pytest.raises(AuditError, match="plain JSON"):
        log.record_send("sync", HUB, "x", b"", {"value": object()})


def test_processes_appending_at_once_keep_one_valid_tree(tmp_path):
    """uvicorn workers and Flower's ClientApp processes share one log."""
    AuditLog(tmp_path).close()  # create the key first, as the edge app does at start
    code = (
        "import sys; from pathlib import Path; from edge_worker.audit import AuditLog\n"
        "log = AuditLog(Path(sys.argv[1]))\n"
        "for i in range(40): log.record_send('flower', 'x', 'model-update', bytes([i]), {'i': i})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    result = verify(tmp_path)
    assert result.ok and result.entries == 80, result.message()


def test_verify_is_consistent_while_the_node_appends(tmp_path):
    """The node keeps logging while its scheduled verification (or an officer) reads: every
    verification sees one moment of the log, never a head without its entry."""
    with AuditLog(tmp_path) as log:
        log.record_send("sync", "http://hub", "heartbeat", b"{}", {})
    done = threading.Event()

    def append() -> None:
        with AuditLog(tmp_path) as log:
            for i in range(400):
                log.record_send("sync", "http://hub", "heartbeat", b"{}" * i, {"i": i})
        done.set()

    writer = threading.Thread(target=append)
    writer.start()
    results = []
    while not done.is_set():
        results.append(verify(tmp_path))
    writer.join()
    assert len(results) > 3 and all(r.ok for r in results), next(r.message() for r in results if not r.ok)


# -- the stored tree: frontiers, subtree hashes, proofs from them ----------------------------------


def test_a_flipped_byte_in_a_frontier_is_named_as_such_not_blamed_on_the_next_entry(tmp_path, hub_key):
    log = _filled(tmp_path, hub_key)
    conn = sqlite3.connect(EdgeDataDir(tmp_path).audit_db)
    [frontier] = conn.execute("SELECT frontier FROM tree_heads WHERE size = 7").fetchone()
    conn.close()
    flipped = frontier.replace(frontier[-5], "0" if frontier[-5] != "0" else "1", 1)  # one hex digit of a hash
    tamper(tmp_path, ("UPDATE tree_heads SET frontier = ? WHERE size = 7", (flipped,)))
    result = verify(tmp_path, log.public_key)
    assert (result.first_bad, result.reason) == (
        7,
        "the tree head's stored frontier does not match the entries (frontier column changed)",
    )
    log.record_send("sync", HUB, "heartbeat", b"{}", {"health": "ok"})  # extends the flipped frontier
    assert verify(tmp_path, log.public_key).first_bad == 7  # still the frontier, not the genuine entry 8
    tamper(tmp_path, ("UPDATE tree_heads SET frontier = ? WHERE size = 3", ("not json",)))
    assert "frontier" in verify(tmp_path, log.public_key).reason


@pytest.mark.parametrize(
    "statement, first_bad, words",
    [
        ("UPDATE subtrees SET hash = ? WHERE level = 1 AND idx = 1", 4, "subtree (1, 1) (level, index) does not match"),
        (
            "DELETE FROM subtrees WHERE level = 2 AND idx = 0 AND ? IS NOT NULL",
            4,
            "subtree (2, 0) (level, index) missing",
        ),
        ("INSERT INTO subtrees VALUES (0, 7, ?)", 8, "stored subtree hashes cover 8 entries, the log holds 7"),
        ("INSERT INTO subtrees VALUES (5, -1, ?)", None, "hashes no entry gives"),
    ],
)
def test_a_changed_subtree_hash_is_named(tmp_path, hub_key, statement, first_bad, words):
    log = _filled(tmp_path, hub_key)
    tamper(tmp_path, (statement, ("ab" * 32,)))
    result = verify(tmp_path, log.public_key)
    assert not result.ok and result.first_bad == first_bad and words in result.reason, result.message()


def _legacy(data_dir: Path) -> None:
    """The log as versions before stored subtrees wrote it."""
    tamper(data_dir, ("DROP TABLE subtrees", ()))


def test_a_log_written_before_subtrees_were_stored_still_verifies_and_is_migrated(tmp_path, hub_key):
    _filled(tmp_path, hub_key).close()
    _legacy(tmp_path)
    assert verify(tmp_path).ok
    reader = AuditReader(tmp_path)
    assert reader.consistency_proof(3, 7).verifies() and reader.inclusion_proof(2, 5).verifies()
    with AuditLog(tmp_path) as log:  # opening it stores the subtrees of every entry
        log.record_send("sync", HUB, "heartbeat", b"{}", {"health": "ok"})
        assert log.consistency_proof(3).verifies()
    conn = sqlite3.connect(EdgeDataDir(tmp_path).audit_db)
    assert conn.execute("SELECT COUNT(*) FROM subtrees").fetchone()[0] == 2 * 8 - 1  # 2n - popcount(n)
    conn.close()
    assert verify(tmp_path).ok


def test_proofs_between_any_two_heads_verify_and_read_no_leaves(tmp_path):
    with AuditLog(tmp_path) as log:
        for i in range(37):
            log.record_send("sync", HUB, "heartbeat", b"%d" % i, {"i": i})
        heads = AuditReader(tmp_path).tree_heads()
        for second in range(1, 38):
            for first in range(1, second + 1):
                proof = log.consistency_proof(first, second)
                assert (proof.first, proof.second) == (heads[first], heads[second]) and proof.verifies()
            for entry_id in range(1, second + 1):
                inclusion = log.inclusion_proof(entry_id, second)
                assert inclusion.root == heads[second].root and inclusion.verifies()
        assert log.consistency_proof(5).second == heads[37]
        for first, second in ((0, 3), (4, 3), (1, 38)):
            with pytest.raises(AuditError):
                log.consistency_proof(first, second)
    # built from the stored subtrees alone: the old entries are not even read
    tamper(tmp_path, ("DELETE FROM entries WHERE id < 30", ()))
    assert AuditReader(tmp_path).consistency_proof(7, 37).verifies()
