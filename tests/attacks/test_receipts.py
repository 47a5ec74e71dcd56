"""Attack 4 of issue 13, against a real ``nexus hub serve`` on loopback: the hub's receipts.

Before: the hub signed a ``Nexus-Receipt`` for every request that merely claimed to be a
node's (a 401 for ``Bearer node.n-doesnotexist.x`` carried a valid one), and a receipt bound
only the body digest, so one for any body-less request (an assignment poll) passed for any
other, of any node. Now the hub signs only for requests it authenticated as a node, and a
receipt binds that node, the method, the path and the body digest: the edge refuses one that
differs in any (a ``refusal`` on its audit log, not a stored receipt) and ``nexus audit
verify`` checks the binding of every receipt it holds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_worker.audit import REFUSAL, SEND, AuditLog, AuditReader
from edge_worker.egress import HeartbeatPayload, HubGateway
from edge_worker.identity import NodeIdentity
from hub.client import OperatorClient
from nexus_tools.processes import ServerThread, free_port
from nexus_wire.datadir import HubDataDir
from nexus_wire.heads import HEADER, decode_header, signature_verifies
from nexus_wire.payloads import HUB_RECEIPT
from tests.support.audit import tamper
from tests.support.hub import EnrolledNode, enroll_node
from tests.support.processes import NEXUS, HubProcess

HEARTBEAT = "/v1/nodes/me/heartbeat"


class Hub:
    """The hub process, with what enrolling needs of it (tests.support.hub.HubClients)."""

    def __init__(self, process: HubProcess) -> None:
        self.process = process
        self.url = process.url
        self.http = httpx.Client(base_url=process.url, timeout=10)
        self.admin = OperatorClient(process.url, HubDataDir(process.data_dir).admin_token.read_text().strip())
        self.key = Ed25519PublicKey.from_public_bytes(base64.b64decode(self.http.get("/v1/hub").json()["public_key"]))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("receipts")
    process = HubProcess(root / "hub", free_port(), "--no-superlink")
    try:
        running = Hub(process)
        yield running
        running.http.close()
        running.admin.close()
    finally:
        process.stop()


class ReceiptSwapper:
    """A relay on the hub link (a proxy, or anyone on the plain-HTTP path) that forwards
    every request and, when told to, hands back another receipt than the hub's."""

    def __init__(self, hub_url: str) -> None:
        self.upstream = httpx.AsyncClient(base_url=hub_url, timeout=10)
        self.replacement: str | None = None
        self.seen: list[str] = []  # the hub's receipt headers, in order
        self.server = ServerThread(
            Starlette(routes=[Route("/{path:path}", self.relay, methods=["GET", "POST"])]), port=0
        ).start()
        self.url = self.server.url

    async def relay(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        reply = await self.upstream.request(
            request.method, request.url.path, content=await request.body(), headers=headers
        )
        out = {k: v for k, v in reply.headers.items() if k.lower() not in ("content-length", "content-encoding")}
        if HEADER.lower() in {k.lower() for k in out}:
            self.seen.append(reply.headers[HEADER])
            if self.replacement is not None:
                out = {k: v for k, v in out.items() if k.lower() != HEADER.lower()} | {HEADER: self.replacement}
        return Response(reply.content, status_code=reply.status_code, headers=out)

    def stop(self) -> None:
        self.server.stop()


def _heartbeat(hub: Hub, node: EnrolledNode, body: bytes, path: str = HEARTBEAT) -> dict:
    reply = hub.http.post(path, content=body, headers=node.auth)
    assert reply.status_code == 200, reply.text
    receipt = decode_header(reply.headers[HEADER])
    assert receipt is not None and signature_verifies(receipt, hub.key)
    return receipt


def _verify(edge: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NEXUS, "audit", "verify", "--data-dir", str(edge)], capture_output=True, text=True, timeout=60
    )


def test_a_401_for_an_unknown_node_carries_no_receipt(hub: Hub) -> None:
    unknown = {"Authorization": "Bearer node.n-doesnotexist.x"}
    for method, path in (("POST", HEARTBEAT), ("GET", "/v1/nodes/me/assignments"), ("POST", "/v1/nodes/me/counters")):
        reply = hub.http.request(
            method, path, content=b'{"health":"ok"}' if method == "POST" else None, headers=unknown
        )
        assert reply.status_code == 401 and HEADER not in reply.headers, (path, reply.headers)
    bad_token = hub.http.post("/v1/enroll", json={"token": "nx_not-a-token"})
    assert bad_token.status_code == 401 and HEADER not in bad_token.headers
    # the same request with a real node credential is receipted: the 401s above are not a blanket off switch
    assert _heartbeat(hub, enroll_node(hub), b'{"health":"ok"}')["path"] == HEARTBEAT


def test_a_receipt_for_one_nodes_request_is_no_receipt_for_another_node_path_or_body(hub: Hub, tmp_path: Path) -> None:
    a, b = enroll_node(hub), enroll_node(hub)
    body = b'{"health":"ok","request_rate":1.0}'
    receipt = _heartbeat(hub, a, body)
    assert (receipt["node"], receipt["method"], receipt["path"]) == (a.node_id, "POST", HEARTBEAT)

    # the edge's own check (AuditLog.attach_receipt), on entries recorded as a gateway records them
    log = AuditLog(tmp_path)
    log.pin_hub_key(hub.key, hub.url)

    def sent(as_node: str, request: str, payload: bytes) -> int:
        return log.record_send("sync", hub.url, "heartbeat", payload, {"request": request, "node": as_node}).id

    cases = {
        "node": sent(b.node_id, f"POST {HEARTBEAT}", body),
        "path": sent(a.node_id, "POST /v1/nodes/me/counters", body),
        "sha256": sent(a.node_id, f"POST {HEARTBEAT}", b'{"health":"ok","request_rate":2.0}'),
        "method": sent(a.node_id, f"PUT {HEARTBEAT}", body),
    }
    for member, entry_id in cases.items():
        problem = log.attach_receipt(entry_id, receipt)
        assert problem is not None and f"receipt {member} does not match" in problem, (member, problem)
    assert log.attach_receipt(sent(a.node_id, f"POST {HEARTBEAT}", body), receipt) is None  # A's own request
    assert len(AuditReader(tmp_path).receipts()) == 1
    assert [e.summary["entry"] for e in AuditReader(tmp_path).entries(REFUSAL)] == list(cases.values())


def test_an_edge_handed_a_receipt_for_another_body_or_node_refuses_it(hub: Hub, tmp_path: Path) -> None:
    relay = ReceiptSwapper(hub.url)
    edge = tmp_path / "edge"
    other = enroll_node(hub)
    try:

        async def attack() -> tuple[HubGateway, list[int]]:
            gateway = HubGateway(relay.url, AuditLog(edge), timeout=10)
            try:
                reply = await gateway.enroll(hub.admin.create_token({})["token"])
                gateway.identity = NodeIdentity(reply.node_id, reply.node_secret, reply.public_key, {})
                await gateway.heartbeat(HeartbeatPayload(health="ok", request_rate=1.0))
                # a genuine hub receipt for this node and path, but the earlier body
                relay.replacement = relay.seen[-1]
                await gateway.heartbeat(HeartbeatPayload(health="ok", request_rate=2.0))
                # a genuine hub receipt for this very body and path, but another node's request
                relay.replacement = hub.http.post(
                    HEARTBEAT, content=b'{"health":"ok","request_rate":3.0}', headers=other.auth
                ).headers[HEADER]
                await gateway.heartbeat(HeartbeatPayload(health="ok", request_rate=3.0))
                return gateway, [e.id for e in AuditReader(edge).entries(SEND)]
            finally:
                relay.replacement = None
                await gateway.aclose()
                gateway.audit.close()

        gateway, sends = asyncio.run(attack())
    finally:
        relay.stop()

    enrollment, first, replayed, foreign = sends
    reader = AuditReader(edge)
    assert set(reader.receipts()) == {enrollment, first}  # the refused ones are not kept as proof
    refusals = [e for e in reader.entries(REFUSAL) if e.kind == HUB_RECEIPT]
    assert [(e.summary["entry"], e.reason) for e in refusals] == [
        (replayed, "receipt sha256 does not match what was sent"),
        (foreign, "receipt node does not match what was sent"),
    ]
    assert gateway.receipt_problems == 2
    ok = _verify(edge)  # the refusals are on the log, which stays intact
    assert ok.returncode == 0 and "2 receipts" in ok.stdout, ok.stderr


def test_audit_verify_flags_a_tampered_stored_receipt(hub: Hub, tmp_path: Path) -> None:
    edge = tmp_path / "edge"

    async def polls() -> None:
        gateway = HubGateway(hub.url, AuditLog(edge), timeout=10)
        try:
            reply = await gateway.enroll(hub.admin.create_token({})["token"])
            gateway.identity = NodeIdentity(reply.node_id, reply.node_secret, reply.public_key, {})
            await gateway.poll_assignments(None)
            await gateway.poll_funnel_config(None)
        finally:
            await gateway.aclose()
            gateway.audit.close()

    asyncio.run(polls())
    reader = AuditReader(edge)
    _, assignments, funnel_config = [e.id for e in reader.entries(SEND)]
    receipts = reader.receipts()
    assert set(receipts) >= {assignments, funnel_config} and _verify(edge).returncode == 0

    # both polls are body-less: the same body digest, told apart only by the bound path
    tamper(edge, ("UPDATE receipts SET receipt = ? WHERE entry_id = ?", (receipts[assignments], funnel_config)))
    swapped = _verify(edge)
    assert swapped.returncode == 1, swapped.stdout
    assert f"entry {funnel_config}: receipt path does not match" in swapped.stderr, swapped.stderr

    # a stored receipt edited to name the entry's request: the hub's signature no longer holds
    edited = json.loads(receipts[assignments])
    edited["path"] = "/v1/nodes/me/funnel-config"
    tamper(edge, ("UPDATE receipts SET receipt = ? WHERE entry_id = ?", (json.dumps(edited), funnel_config)))
    forged = _verify(edge)
    assert forged.returncode == 1 and f"entry {funnel_config}: receipt signature" in forged.stderr, forged.stderr
