"""The egress gateway against a real hub: declared payloads only, every send in the audit
log before it leaves, the hub's signed receipt beside it, ``nexus audit verify`` on the result."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from edge_worker.audit import HUB_KEY, REFUSAL, SEND, AuditLog, AuditReader, verify
from edge_worker.egress import HeartbeatPayload, HubGateway
from edge_worker.hub_link import HubLink
from edge_worker.payloads import Declarations, PayloadRefused
from edge_worker.sync import Backoff, SyncAgent
from nexus_service.keyfiles import load_signing_key
from nexus_wire.datadir import EdgeDataDir, HubDataDir
from nexus_wire.heads import HEADER, RECEIPT_FORMAT, decode_header, key_id, signature_verifies
from nexus_wire.payloads import COUNTERS
from tests.support.edge import StandInRepository
from tests.support.hub import RunningHub, make_bundle

FREE_TEXT = "Bob Smith called about order 1234, very angry"


def _sync(hub: RunningHub, edge: Path, repo: StandInRepository, token: str | None = None) -> dict[str, str]:
    async def once() -> dict[str, str]:
        agent = SyncAgent(
            HubLink.open(hub.url, edge, timeout=5.0),
            repo.root,
            repo.activate,
            repo.status,
            enroll_token=token,
            backoff=Backoff(0.05, 0.2),
        )
        try:
            return await agent.sync_once()
        finally:
            await agent.link.aclose()

    return asyncio.run(once())


def _nexus_verify(edge: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus_cli", "audit", "verify", "--data-dir", str(edge)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _tamper(edge: Path, sql: str, params: tuple = ()) -> None:
    """Edit the log as someone with file access would (the append-only triggers dropped first)."""
    conn = sqlite3.connect(EdgeDataDir(edge).audit_db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(sql, params)
    conn.close()


def test_a_free_text_field_is_refused_logged_and_never_sent(hub: RunningHub, tmp_path: Path) -> None:
    edge = tmp_path / "edge"
    gateway = HubGateway(hub.url, AuditLog(edge), timeout=5.0)
    declared = Declarations(counter_keys=frozenset({("exp-1", "a", "buy")}))
    gateway.declared = declared

    async def attempts() -> list[str]:
        reasons = []
        bad = [
            ("heartbeat", "POST", "/v1/nodes/me/heartbeat", {"health": "ok", "note": FREE_TEXT}),
            ("heartbeat", "POST", "/v1/nodes/me/heartbeat", {"health": "ok", "models": {"funnel": FREE_TEXT}}),
            (
                COUNTERS,
                "POST",
                "/v1/funnels/report",
                {"node_id": "n-1", "counts": [{"experiment": "exp-1", "variant": "a", "step": FREE_TEXT, "count": 1}]},
            ),
            ("enrollment", "POST", "/v1/enroll", {"token": FREE_TEXT}),
        ]
        for kind, method, path, payload in bad:
            with pytest.raises(PayloadRefused) as info:
                await gateway._send(kind, method, path, payload, authenticated=False)
            reasons.append(info.value.reason)
        await gateway.aclose()
        return reasons

    reasons = asyncio.run(attempts())
    assert "'note' is not declared" in reasons[0] and "free text" in reasons[1]
    assert "not an (experiment, variant, step)" in reasons[2] and "free text" in reasons[3]
    assert sum(gateway.messages.values()) == 0  # nothing reached the hub
    refusals = list(AuditReader(edge).entries(REFUSAL))
    assert [(e.kind, e.reason) for e in refusals] == [
        (k, r) for k, r in zip(["heartbeat", "heartbeat", COUNTERS, "enrollment"], reasons)
    ]
    assert not list(AuditReader(edge).entries(SEND))
    # the log itself keeps no free text: reasons name fields, never values
    assert FREE_TEXT.split()[0] not in EdgeDataDir(edge).audit_db.read_bytes().decode("latin-1")
    assert verify(edge).ok


def test_hub_signs_receipts_for_authenticated_node_requests_only(hub: RunningHub) -> None:
    token = hub.admin.create_token({})["token"]
    body = json.dumps({"token": token}).encode()
    reply = hub.http.post("/v1/enroll", content=body)
    receipt = decode_header(reply.headers[HEADER])
    hub_key = load_signing_key(HubDataDir(hub.data_dir).signing_key).public_key()
    assert receipt is not None and signature_verifies(receipt, hub_key)
    # the token authenticated the caller as the node it created: the receipt names it
    node_id = reply.json()["node_id"]
    assert (receipt["format"], receipt["node"], receipt["method"], receipt["path"]) == (
        RECEIPT_FORMAT,
        node_id,
        "POST",
        "/v1/enroll",
    )
    assert receipt["sha256"] == hashlib.sha256(body).hexdigest() and receipt["bytes"] == len(body)
    credential = {"Authorization": f"Bearer node.{node_id}.{reply.json()['node_secret']}"}
    # a node request the hub refuses (bad body) still gets a receipt for what it read
    bad = hub.http.post("/v1/nodes/me/heartbeat?probe=1", content=b'{"health":"maybe"}', headers=credential)
    bad_receipt = decode_header(bad.headers[HEADER])
    assert bad.status_code == 422 and bad_receipt["bytes"] == 18
    assert (bad_receipt["node"], bad_receipt["path"]) == (node_id, "/v1/nodes/me/heartbeat?probe=1")
    # none for a caller the hub does not know: a used token, a wrong secret, no credential
    assert HEADER not in hub.http.post("/v1/enroll", content=body).headers
    wrong = hub.http.post(
        "/v1/nodes/me/heartbeat", content=b"x" * 100_000, headers={"Authorization": "Bearer node.n-x.y"}
    )
    assert wrong.status_code == 401 and HEADER not in wrong.headers
    assert HEADER not in hub.http.get("/v1/nodes/me/assignments").headers
    # nor for a node on an operator endpoint (403), nor for the operator
    assert HEADER not in hub.http.get("/v1/nodes", headers=credential).headers
    admin_token = (hub.data_dir / "admin.token").read_text().strip()
    assert HEADER not in hub.http.get("/v1/nodes", headers={"Authorization": f"Bearer {admin_token}"}).headers


def test_receipts_verify_end_to_end_and_tampering_is_named(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"v1"))
    hub.admin.promote("funnel", "1", "stable")
    edge, repo = tmp_path / "edge", StandInRepository(tmp_path / "edge" / "models")
    assert _sync(hub, edge, repo, hub.admin.create_token({"region": "1"})["token"]) == {"funnel": "1"}
    assert _sync(hub, edge, repo) == {}  # a restarted agent: same pinned key, a 304 poll

    reader = AuditReader(edge)
    sends = list(reader.entries(SEND))
    kinds = [e.kind for e in sends]
    assert (
        kinds[:2] == ["enrollment", "heartbeat"] and kinds.count("bundle-download") == 3
    )  # manifest, signature, model.onnx
    assert len(list(reader.entries(HUB_KEY))) == 1  # pinned once, at enrollment
    assert set(reader.receipts()) == {e.id for e in sends}  # every send has its receipt
    hub_key_id = key_id(load_signing_key(HubDataDir(hub.data_dir).signing_key).public_key())
    assert json.loads(reader.receipts()[sends[0].id])["key_id"] == hub_key_id

    ok = _nexus_verify(edge)
    assert ok.returncode == 0, ok.stderr
    assert f"{len(sends)} receipts" in ok.stdout

    # flip one hex digit of one entry's sha256: verify fails and names that entry
    victim = sends[3]
    flipped = victim.sha256[:10] + ("0" if victim.sha256[10] != "0" else "1") + victim.sha256[11:]
    _tamper(edge, "UPDATE entries SET sha256 = ? WHERE id = ?", (flipped, victim.id))
    bad = _nexus_verify(edge)
    assert bad.returncode == 1 and f"entry {victim.id}:" in bad.stderr, bad.stderr
    _tamper(edge, "UPDATE entries SET sha256 = ? WHERE id = ?", (victim.sha256, victim.id))
    assert _nexus_verify(edge).returncode == 0

    # a receipt that does not match its entry
    receipt = json.loads(reader.receipts()[sends[1].id])
    receipt["bytes"] += 1
    _tamper(edge, "UPDATE receipts SET receipt = ? WHERE entry_id = ?", (json.dumps(receipt), sends[1].id))
    bad = _nexus_verify(edge)
    assert bad.returncode == 1 and f"entry {sends[1].id}: receipt" in bad.stderr, bad.stderr


def test_a_heartbeat_is_logged_with_its_exact_bytes(hub: RunningHub, tmp_path: Path) -> None:
    edge = tmp_path / "edge"
    repo = StandInRepository(edge / "models")
    _sync(hub, edge, repo, hub.admin.create_token({})["token"])
    [entry] = [e for e in AuditReader(edge).entries(SEND) if e.kind == "heartbeat"]
    assert entry.summary["health"] == "ok" and entry.summary["request"] == "POST /v1/nodes/me/heartbeat"
    receipt = json.loads(AuditReader(edge).receipts()[entry.id])
    assert (receipt["sha256"], receipt["bytes"]) == (entry.sha256, entry.bytes)
    # the audit log's totals before this heartbeat; not verified yet, so no verdict is sent
    sent_before = sum(e.bytes for e in AuditReader(edge).entries(SEND) if e.id < entry.id)
    assert (entry.summary["audit_entries"], entry.summary["bytes_sent"]) == (
        entry.id - 1,
        sent_before,
    ) and sent_before > 0
    # and the newest signed tree head: the summary keeps its size and root, the body all of it
    head = AuditReader(edge).tree_heads()[entry.id - 1]
    assert entry.summary["audit_head"] == {"size": entry.id - 1, "root": head.root}
    payload = {
        **asdict(HeartbeatPayload(health="ok")),
        "audit_entries": entry.id - 1,
        "bytes_sent": sent_before,
        "audit_head": asdict(head),
    }
    body = json.dumps(
        {k: v for k, v in payload.items() if v is not None}, sort_keys=True, separators=(",", ":")
    ).encode()
    assert entry.bytes == len(body) and entry.sha256 == hashlib.sha256(body).hexdigest()


def test_a_node_enrolled_before_its_audit_log_pins_the_key_it_holds(hub: RunningHub, tmp_path: Path) -> None:
    edge = tmp_path / "edge"
    repo = StandInRepository(edge / "models")
    _sync(hub, edge, repo, hub.admin.create_token({})["token"])
    audit_db = EdgeDataDir(edge).audit_db
    for path in (audit_db, audit_db.with_name(f"{audit_db.name}-wal"), audit_db.with_name(f"{audit_db.name}-shm")):
        path.unlink(missing_ok=True)  # as on a node upgraded from before issue 7
    _sync(hub, edge, repo)
    entries = list(AuditReader(edge).entries())
    assert entries[0].event == HUB_KEY and [e.kind for e in entries[1:3]] == ["heartbeat", "assignment-poll"]
    assert _nexus_verify(edge).returncode == 0
