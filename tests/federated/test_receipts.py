"""The hub's receipts for Flower replies: the ServerApp signs one per reply it received and
hands it back; each node's audit mod files it beside the entry of that reply, and
``verify`` checks it like an HTTP receipt. The real ClientApp over the in-process LocalGrid;
tests/e2e/test_privacy_canary.py does the same through a real SuperLink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_worker.audit import REFUSAL, SEND, AuditLog, AuditReader, verify
from federated.client_app import app
from federated.local_grid import LocalGrid
from federated.receipts import ReceiptBook
from federated.server_app import run_rounds
from models.errors import NexusError
from models.families import FAMILIES
from nexus_wire.heads import FLOWER_RECEIPT_FORMAT, KEY_ENV
from nexus_wire.payloads import HUB_RECEIPT
from nexus_wire.runconfig import RunConfig
from tests.support.audit import receipt_for, tamper
from tests.support.federated import funnel_spec, node_with_outcomes

RECEIPTED = {"node-tags", "model-update", "evaluation-metrics", "error"}


@pytest.fixture
def hub_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _run(tmp_path: Path, hub_key: Ed25519PrivateKey, rounds: int = 2) -> tuple[list[Path], ReceiptBook]:
    nodes = [node_with_outcomes(tmp_path / name, seed) for name, seed in (("a", 1), ("b", 2))]
    dirs = [d for d, _ in nodes]
    for d in dirs:
        with AuditLog(d) as audit:  # what the gateway does at enrollment
            audit.pin_hub_key(hub_key.public_key(), "http://hub")
    spec = funnel_spec([s for _, sessions in nodes for s in sessions])
    book = ReceiptBook(hub_key)
    grid = LocalGrid(app, {i + 1: {"data-dir": str(d)} for i, d in enumerate(dirs)})
    run_rounds(
        grid,
        RunConfig(rounds=rounds, min_nodes=2, seed=5),
        spec,
        FAMILIES.get("funnel").task.init_weights(spec, 0),
        receipts=book,
    )
    return dirs, book


def test_every_flower_reply_gets_a_receipt_that_verifies(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    dirs, book = _run(tmp_path, hub_key)
    # 2 nodes x (the node-config query + 2 rounds x (train + evaluate)), all delivered: most with later messages
    assert book.issued == book.delivered == 10
    for d in dirs:
        reader = AuditReader(d)
        receipts = {k: json.loads(v) for k, v in reader.receipts().items()}
        sends = [e for e in reader.entries(SEND) if e.channel == "flower"]
        kinds = sorted(e.kind for e in sends if e.kind in RECEIPTED)
        assert kinds == ["evaluation-metrics"] * 2 + ["model-update"] * 2 + ["node-tags"]
        for entry in sends:
            if entry.kind in RECEIPTED:
                receipt = receipts[entry.id]
                # bound to this node's Flower id, the message and the bytes of the reply
                assert receipt["format"] == FLOWER_RECEIPT_FORMAT
                assert (receipt["sha256"], receipt["bytes"], receipt["message"]) == (
                    entry.sha256,
                    entry.bytes,
                    entry.summary["message"],
                )
                assert (receipt["node"], receipt["message_type"]) == (dirs.index(d) + 1, entry.summary["message_type"])
            else:  # the acknowledgement of the last receipts gets none: nothing answers it
                assert entry.kind == "receipt-ack" and entry.id not in receipts
        result = verify(d)
        assert result.ok, result.message()
        assert result.receipts == 5


def test_a_stored_flower_receipt_that_does_not_match_fails_verify(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    [a, _], _ = _run(tmp_path, hub_key, rounds=1)
    update = next(e for e in AuditReader(a).entries(SEND) if e.kind == "model-update")
    receipt = json.loads(AuditReader(a).receipts()[update.id])
    receipt["bytes"] += 1
    tamper(a, ("UPDATE receipts SET receipt = ? WHERE entry_id = ?", (json.dumps(receipt), update.id)))
    result = verify(a)
    assert not result.ok and result.first_bad == update.id and "match" in result.reason


def test_a_receipt_signed_by_another_key_is_refused(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    nodes = [node_with_outcomes(tmp_path / "a", 1)]
    with AuditLog(nodes[0][0]) as audit:
        audit.pin_hub_key(hub_key.public_key(), "http://hub")
    spec = funnel_spec(nodes[0][1])
    grid = LocalGrid(app, {1: {"data-dir": str(nodes[0][0])}})
    run_rounds(
        grid,
        RunConfig(rounds=1, min_nodes=1, seed=5),
        spec,
        FAMILIES.get("funnel").task.init_weights(spec, 0),
        receipts=ReceiptBook(Ed25519PrivateKey.generate()),
    )
    # none (node config, update, metrics) is kept as proof: each is a refusal on the log, which stays intact
    reader = AuditReader(nodes[0][0])
    refusals = [e for e in reader.entries(REFUSAL) if e.kind == HUB_RECEIPT]
    assert not reader.receipts() and len(refusals) == 3 and all("signature" in e.reason for e in refusals)
    assert verify(nodes[0][0]).ok


def test_a_receipt_for_another_nodes_reply_is_refused(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    [_, b], _ = _run(tmp_path, hub_key, rounds=1)
    update = next(e for e in AuditReader(b).entries(SEND) if e.kind == "model-update")
    with AuditLog(b) as log:
        # the same message and bytes as a reply of b's, but signed as received from node 1
        entry = log.record_send("flower", "superlink", "model-update", b"x", dict(update.summary, message="m-2"))
        assert "receipt node does not match" in log.attach_receipt(entry.id, receipt_for(hub_key, entry, node=1))
        assert log.attach_receipt(entry.id, receipt_for(hub_key, entry)) is None  # b's own
    assert verify(b).ok


def test_the_serverapp_reads_its_key_from_the_environment(tmp_path: Path, hub_key: Ed25519PrivateKey) -> None:
    assert ReceiptBook.from_env({}) is None  # the simulation: no hub, no receipts
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        hub_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    book = ReceiptBook.from_env({KEY_ENV: str(pem)})
    assert book is not None and book.key.public_key().public_bytes_raw() == hub_key.public_key().public_bytes_raw()
    with pytest.raises(NexusError, match="cannot read the signing key"):
        ReceiptBook.from_env({KEY_ENV: str(tmp_path / "missing.pem")})
