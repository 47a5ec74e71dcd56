"""The canary: nothing an edge is told leaves it, and every byte that does leave is in its
audit log.

Real processes on 127.0.0.1: ``nexus hub serve`` with its SuperLink, two ``nexus edge
serve`` (region 1, 2) with their SuperNodes. A recording TCP proxy sits in front of the
hub's HTTP port and one in front of the SuperLink port; the edges know only the proxies.
Every request to the edges carries unique canary strings and visitor ids: funnel
assignments and events, funnel outcomes, emotion feedback and inference; then one
federated round. Afterwards every captured byte is searched for every canary, and:

- hub HTTP: each captured request is parsed; its body (sha256, length) and request line
  must be a ``send`` entry of an edge's audit log. Allowed framing overhead: the request
  line and headers, at most ``MAX_HEAD`` bytes per request, with header names from
  ``HEADERS`` only.
- SuperLink (Flower's REST fleet API in 1.41: HTTP/1.1 with protobuf bodies): every
  protobuf byte field of every request body is hashed (and, for Flower's pushed objects,
  the body after the object head); every array an edge's audit log says it sent (sha256
  of ``Array.data``) must be among them. The rest (HTTP heads,
  protobuf framing, Flower's registration, heartbeats and polls, message metadata) is
  overhead: it must hold no canary, and it is reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flwr.supercore.constant import HEAD_BODY_DIVIDER

from edge_worker.audit import SEND, AuditReader, verify
from hub.client import OperatorClient
from hub.superlink import SuperLink, SuperLinkConfig
from models.bundle import DEFAULT_REPOSITORY
from nexus_tools.processes import free_port
from tests.support.env import need
from tests.support.processes import NEXUS, EdgeProcess, HubProcess, wait_for
from tests.support.sessions import synthetic_sessions

BIN = Path(__import__("sys").executable).parent
SESSIONS_PER_EDGE = 120
MAX_HEAD = 600
HEADERS = {
    "host",
    "accept",
    "accept-encoding",
    "connection",
    "user-agent",
    "content-length",
    "content-type",
    "authorization",
    "if-none-match",
}


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 keeping every byte clients send, per connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.streams: list[bytearray] = []
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)
        assert self._server is not None
        self.port = self._server.sockets[0].getsockname()[1]

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        started.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recorded = bytearray()
        self.streams.append(recorded)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bytearray | None) -> None:
            try:
                while data := await src.read(1 << 16):
                    if record is not None:
                        record.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, recorded), pipe(up_reader, writer, None))

    def captured(self) -> bytes:
        return b"".join(self.streams)

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class CanaryEdge(EdgeProcess):
    """An edge serving both models (feedback needs emotion), syncing funnels every second."""

    # served() still watches the funnel model
    extra_env = {"NEXUS_MODELS": "funnel,emotion", "NEXUS_FUNNEL_SYNC_S": "1"}


# ---------------------------------------------------------------- parsing what was captured


def http_requests(stream: bytes) -> list[tuple[str, dict[str, str], bytes, int]]:
    """(request line, headers, body, head bytes) of each HTTP/1.1 request on one connection."""
    out, pos = [], 0
    while pos < len(stream):
        end = stream.index(b"\r\n\r\n", pos)
        line, *fields = stream[pos:end].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        assert "chunked" not in headers.get("transfer-encoding", ""), "the gateway sends sized bodies"
        size = int(headers.get("content-length", "0"))
        body = stream[end + 4 : end + 4 + size]
        out.append((line, headers, body, end + 4 - pos))
        pos = end + 4 + size
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def byte_fields(buf: bytes, depth: int = 0) -> list[bytes]:
    """Every length-delimited field of a protobuf message, recursively (schema-free)."""
    fields, pos = [], 0
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            wire = key & 7
            if wire == 0:
                _, pos = _varint(buf, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(buf, pos)
                if pos + size > len(buf):
                    raise ValueError("truncated")
                value = buf[pos : pos + size]
                fields.append(value)
                if depth < 12:
                    fields += byte_fields(value, depth + 1)
                pos += size
            else:
                raise ValueError("not protobuf")
    except ValueError:
        return fields if depth == 0 else []
    return fields


# ---------------------------------------------------------------- the scenario


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict]:
    need(
        (BIN / "flower-superlink").exists() and (BIN / "flower-supernode").exists(),
        "Flower's binaries are not installed in this environment",
    )
    superlink_port, hub_port = free_port(), free_port()
    hub = HubProcess(tmp_path / "hub", hub_port, "--poll-interval", "0.5", "--superlink-port", str(superlink_port))
    hub_proxy, link_proxy = RecordingProxy(hub_port), RecordingProxy(superlink_port)
    admin = httpx.Client(
        base_url=hub.url,
        headers={"Authorization": f"Bearer {(hub.data_dir / 'admin.token').read_text().strip()}"},
        timeout=30,
    )
    edges: list[CanaryEdge] = []
    old = os.environ.get("NEXUS_SUPERLINK")
    os.environ["NEXUS_SUPERLINK"] = f"127.0.0.1:{link_proxy.port}"
    try:
        operator = OperatorClient(hub.url, (hub.data_dir / "admin.token").read_text().strip())
        operator.promote("funnel", operator.push(DEFAULT_REPOSITORY / "funnel" / "1")["version"], "stable")
        operator.close()
        admin.post("/v1/funnels", json={"id": "shop", "steps": ["view", "cart", "buy"]}).raise_for_status()
        admin.post(
            "/v1/experiments",
            json={
                "id": "checkout",
                "funnel_id": "shop",
                "decision_step": "buy",
                "variants": [{"name": "a"}, {"name": "b"}],
            },
        ).raise_for_status()
        admin.post("/v1/experiments/checkout/start").raise_for_status()
        for region in (1, 2):
            root = tmp_path / f"edge-{region}"
            shutil.copytree(DEFAULT_REPOSITORY / "emotion", root / "models" / "emotion")
            token = admin.post("/v1/tokens", json={"tags": {"region": str(region)}}).json()["token"]
            edges.append(CanaryEdge(root, f"http://127.0.0.1:{hub_proxy.port}", token))
        yield {
            "hub": hub,
            "admin": admin,
            "edges": edges,
            "hub_proxy": hub_proxy,
            "link_proxy": link_proxy,
            "superlink_port": superlink_port,
        }
    finally:
        for edge in edges:
            edge.stop()
        admin.close()
        hub.proc.terminate()
        hub.proc.wait(30)
        hub_proxy.stop()
        link_proxy.stop()
        if old is None:
            os.environ.pop("NEXUS_SUPERLINK", None)
        else:
            os.environ["NEXUS_SUPERLINK"] = old


def _feed(edge: CanaryEdge, region: int, canaries: list[str]) -> None:
    def canary(what: str) -> str:
        value = f"canary-{what}-{uuid.uuid4().hex}"
        canaries.append(value)
        return value

    sessions, labels = synthetic_sessions(SESSIONS_PER_EDGE, seed=300 + region, region=region)
    with httpx.Client(base_url=edge.url, timeout=30) as http:
        for session, label in zip(sessions, labels):
            visitor = canary("visitor")
            assert (
                http.post(
                    "/v1/funnel/outcome", json={"session": session, "converted": bool(label), "visitor_id": visitor}
                ).status_code
                == 201
            )
            assert http.post("/v1/funnels/shop/assign", json={"visitor_id": visitor}).status_code == 200
            for step in ("view", "cart", "buy")[: 1 + int(label) * 2]:
                reply = http.post("/v1/funnels/shop/events", json={"visitor_id": visitor, "step": step})
                assert reply.status_code == 200, reply.text
        for _ in range(20):
            text = f"I am {canary('name')} and my order {canary('order')} is late"
            assert (
                http.post(
                    "/v1/feedback", json={"text": text, "labels": ["anger"], "visitor_id": canary("visitor")}
                ).status_code
                == 201
            )
            assert http.post("/v1/emotion", json={"text": text}).status_code == 200
        assert http.post("/v1/funnel/score", json={"sessions": sessions[:5]}).status_code == 200


def _sends(edges: list[CanaryEdge]) -> list:
    return [e for edge in edges for e in AuditReader(edge.root / "data").entries(SEND)]


def test_no_canary_leaves_an_edge_and_every_byte_is_in_its_audit_log(cluster: dict) -> None:
    hub, edges = cluster["hub"], cluster["edges"]
    wait_for(lambda: all(e.served() == "1" for e in edges), timeout=90, what="edges serving funnel 1 from the hub")
    for edge in edges:  # the funnel config reaches the edges with their first funnel sync
        wait_for(
            lambda url=edge.url: (
                httpx.post(url + "/v1/funnels/shop/assign", json={"visitor_id": "probe"}).status_code == 200
            ),
            timeout=30,
            what="the funnel config on the edge",
        )
    canaries: list[str] = []
    for region, edge in zip((1, 2), edges):
        _feed(edge, region, canaries)
    wait_for(
        lambda: sum(1 for e in _sends(edges) if e.kind == "counters") >= 2,
        timeout=30,
        what="counter reports from both edges",
    )
    link = SuperLink(SuperLinkConfig(hub.data_dir / "flower", port=cluster["superlink_port"]))
    wait_for(lambda: len(link.online_nodes()) == 2, timeout=90, what="both SuperNodes registered through the proxy")
    done = subprocess.run(
        [
            *NEXUS,
            "hub",
            "rounds",
            "start",
            "--model",
            "funnel",
            "--rounds",
            "1",
            "--min-nodes",
            "2",
            "--timeout",
            "60",
            "--wait",
            "--json",
            "--hub",
            hub.url,
            "--data-dir",
            str(hub.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    time.sleep(1.5)  # a last heartbeat and counter report
    for edge in edges:
        edge.stop()
    hub_bytes, link_bytes = cluster["hub_proxy"].captured(), cluster["link_proxy"].captured()

    # 1. no canary, in any spelling we can search for
    assert len(set(canaries)) == len(canaries) > 2 * SESSIONS_PER_EDGE
    for value in canaries:
        for spelling in (value.encode(), value.encode().hex().encode(), value.upper().encode()):
            assert spelling not in hub_bytes and spelling not in link_bytes, f"{value} left an edge"
    assert b"canary" not in hub_bytes and b"canary" not in link_bytes

    sends = _sends(edges)
    for edge in edges:
        result = verify(edge.root / "data")
        assert result.ok, result.message()
        # every Flower update and evaluation got the hub's receipt too (federated/receipts.py)
        reader = AuditReader(edge.root / "data")
        replies = [
            e.id
            for e in reader.entries(SEND)
            if e.channel == "flower" and e.kind in ("model-update", "evaluation-metrics")
        ]
        assert len(replies) == 2 and set(replies) <= set(reader.receipts()), "a Flower reply without the hub's receipt"

    # 2. hub HTTP: every request is an audited send; the rest is a bounded request head
    requests = [r for stream in cluster["hub_proxy"].streams for r in http_requests(bytes(stream))]
    audited = Counter((e.summary.get("request"), e.sha256, e.bytes) for e in sends if e.channel != "flower")
    captured = Counter(
        (line.rsplit(" ", 1)[0], hashlib.sha256(body).hexdigest(), len(body)) for line, _, body, _ in requests
    )
    assert not captured - audited, f"requests without an audit entry: {list(captured - audited)[:3]}"
    assert sum((audited - captured).values()) <= 2 * len(edges)  # logged, then cut off by the shutdown
    heads = [head for *_, head in requests]
    assert max(heads) <= MAX_HEAD
    assert all(set(headers) <= HEADERS for _, headers, _, _ in requests)
    body_bytes = sum(len(body) for _, _, body, _ in requests)
    assert len(hub_bytes) == body_bytes + sum(heads)

    # 3. SuperLink: every array the logs say was sent is in the capture, byte for byte
    fleet = [r for stream in cluster["link_proxy"].streams for r in http_requests(bytes(stream))]
    assert all("content-encoding" not in headers for _, headers, _, _ in fleet)
    assert all(line.startswith("POST /v1/fleet/") for line, *_ in fleet), {line for line, *_ in fleet}
    # Flower pushes each array chunk as an object: "ArrayChunk" head, HEAD_BODY_DIVIDER, the data
    fields = {
        hashlib.sha256(part).hexdigest()
        for _, _, body, _ in fleet
        for f in byte_fields(body)
        for part in (f, f.partition(HEAD_BODY_DIVIDER)[2])
    }
    flower = [e for e in sends if e.channel == "flower"]
    arrays = [a for e in flower for a in e.summary.get("arrays", {}).values()]
    kinds = Counter(e.kind for e in flower)
    assert kinds["model-update"] == 2 and kinds["evaluation-metrics"] == 2, kinds
    missing = [a for a in arrays if a["sha256"] not in fields]
    assert not missing, f"{len(missing)} audited arrays not found in the SuperLink capture"
    array_bytes = sum(a["bytes"] for a in arrays)
    print(
        f"\ncanary: {len(canaries)} canaries; hub HTTP {len(hub_bytes)} B in {len(requests)} requests "
        f"({body_bytes} B bodies in audit entries, {sum(heads)} B request heads, max {max(heads)} B); "
        f"SuperLink {len(link_bytes)} B in {len(fleet)} requests ({array_bytes} B of audited arrays, "
        f"{len(link_bytes) - array_bytes} B Flower framing and control: "
        f"{dict(Counter(line.split()[1] for line, *_ in fleet))})"
    )
