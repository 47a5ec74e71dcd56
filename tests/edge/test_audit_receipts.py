"""The audit log's side of hub receipts: a receipt is kept only when it binds what the entry
recorded (node, method, path, body digest); anything else is a refusal on the log, old
unbound receipts still verify in old logs, and ``verify`` checks the binding of every
stored receipt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_worker.audit import REFUSAL, AuditLog, AuditReader, Entry, verify
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import RECEIPT_FORMAT, canonical_json, sign_receipt, utc_now
from nexus_wire.payloads import HUB_RECEIPT
from tests.support.audit import receipt_for, tamper

HUB = "http://127.0.0.1:8700"
HEARTBEAT = {"health": "ok", "request": "POST /v1/nodes/me/heartbeat", "node": "n-a"}


@pytest.fixture
def hub_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _log(data_dir: Path, hub_key: Ed25519PrivateKey) -> AuditLog:
    log = AuditLog(data_dir)
    log.pin_hub_key(hub_key.public_key(), HUB)
    return log


def _legacy(hub_key: Ed25519PrivateKey, entry: Entry) -> dict:
    """A receipt as the hub signed them before they were bound: body digest only."""
    return sign_receipt(hub_key, {"sha256": entry.sha256, "bytes": entry.bytes}, utc_now())


def test_a_receipt_that_binds_the_entry_is_kept(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    log = _log(tmp_path, hub_key)
    entry = log.record_send("sync", HUB, "heartbeat", b'{"health":"ok"}', HEARTBEAT)
    receipt = receipt_for(hub_key, entry)
    assert (receipt["format"], receipt["node"], receipt["method"], receipt["path"]) == (
        RECEIPT_FORMAT,
        "n-a",
        "POST",
        "/v1/nodes/me/heartbeat",
    )
    assert log.attach_receipt(entry.id, receipt) is None
    assert json.loads(AuditReader(tmp_path).receipts()[entry.id]) == receipt
    assert verify(tmp_path).ok


@pytest.mark.parametrize(
    ("changes", "member"),
    [
        ({"node": "n-b"}, "node"),
        ({"method": "PUT"}, "method"),
        ({"path": "/v1/nodes/me/counters"}, "path"),
        ({"sha256": "0" * 64}, "sha256"),
        ({"bytes": 16}, "bytes"),
        ({"format": "nexus-flower-receipt/2"}, "format"),
    ],
)
def test_a_receipt_for_another_node_request_or_body_is_refused_and_logged(
    tmp_path: Path, hub_key: Ed25519PrivateKey, changes: dict, member: str
) -> None:
    log = _log(tmp_path, hub_key)
    entry = log.record_send("sync", HUB, "heartbeat", b'{"health":"ok"}', HEARTBEAT)
    problem = log.attach_receipt(entry.id, receipt_for(hub_key, entry, **changes))
    assert problem is not None and (member in problem)
    reader = AuditReader(tmp_path)
    assert entry.id not in reader.receipts()
    [refusal] = reader.entries(REFUSAL)
    assert (refusal.kind, refusal.channel, refusal.summary["entry"], refusal.reason) == (
        HUB_RECEIPT,
        "sync",
        entry.id,
        problem,
    )
    assert verify(tmp_path).ok  # a bad receipt is the hub's (or the link's) fault, not the log's


def test_the_refusal_keeps_no_text_the_hub_chose(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    log = _log(tmp_path, hub_key)
    entry = log.record_send("sync", HUB, "heartbeat", b"{}", HEARTBEAT)
    log.attach_receipt(entry.id, receipt_for(hub_key, entry, node="Bob Smith called about order 1234"))
    log.close()
    db = EdgeDataDir(tmp_path).audit_db
    stored = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    assert b"Bob Smith" not in stored and len(list(AuditReader(tmp_path).entries(REFUSAL))) == 1


def test_an_enrollment_receipt_binds_the_node_id_the_reply_assigned(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    log = _log(tmp_path, hub_key)
    sent = {"request": "POST /v1/enroll"}  # sent before the node had an id
    entry = log.record_send("sync", HUB, "enrollment", b'{"token":"t"}', sent)
    assert "node" in log.attach_receipt(entry.id, receipt_for(hub_key, entry, node="n-b"), node="n-a")
    entry = log.record_send("sync", HUB, "enrollment", b'{"token":"u"}', sent)
    assert log.attach_receipt(entry.id, receipt_for(hub_key, entry, node="n-a"), node="n-a") is None
    assert verify(tmp_path).ok


def test_an_unbound_receipt_is_refused_now_but_verifies_in_an_old_log(
    tmp_path: Path, hub_key: Ed25519PrivateKey
) -> None:
    log = _log(tmp_path, hub_key)
    old = log.record_send("sync", HUB, "heartbeat", b"{}", {"health": "ok", "request": "POST /v1/nodes/me/heartbeat"})
    assert "unbound" in log.attach_receipt(old.id, _legacy(hub_key, old))
    assert old.id not in AuditReader(tmp_path).receipts()
    # a log written before bound receipts holds it, stored as that hub sent it: it still verifies
    tamper(
        tmp_path,
        ("INSERT INTO receipts (entry_id, receipt) VALUES (?, ?)", (old.id, json.dumps(_legacy(hub_key, old)))),
    )
    result = verify(tmp_path)
    assert result.ok and result.receipts == 1, result.message()


def test_verify_flags_a_stored_receipt_swapped_for_another_requests(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    log = _log(tmp_path, hub_key)
    # two body-less requests: their body digests are equal, only the binding tells them apart
    poll = log.record_send(
        "sync", HUB, "assignment-poll", b"", {"request": "GET /v1/nodes/me/assignments", "node": "n-a"}
    )
    config = log.record_send(
        "sync", HUB, "assignment-poll", b"", {"request": "GET /v1/nodes/me/funnel-config", "node": "n-a"}
    )
    assert log.attach_receipt(poll.id, receipt_for(hub_key, poll)) is None
    assert log.attach_receipt(config.id, receipt_for(hub_key, config)) is None
    assert verify(tmp_path).ok
    poll_receipt = AuditReader(tmp_path).receipts()[poll.id]
    tamper(tmp_path, ("UPDATE receipts SET receipt = ? WHERE entry_id = ?", (poll_receipt, config.id)))
    result = verify(tmp_path)
    assert not result.ok and result.first_bad == config.id and "path" in result.reason
    # nor does an old unbound receipt pass on an entry that records its node
    legacy = canonical_json(_legacy(hub_key, config))
    tamper(tmp_path, ("UPDATE receipts SET receipt = ? WHERE entry_id = ?", (legacy, config.id)))
    result = verify(tmp_path)
    assert not result.ok and result.first_bad == config.id and "unbound" in result.reason
