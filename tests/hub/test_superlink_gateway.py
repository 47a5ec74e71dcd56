"""The hub's Flower children as configured (hub/superlink.py, hub/rounds.py) and its Fleet
gateway (hub/fleet_gateway.py) between real HTTP servers on loopback: a stand-in upstream
records what reaches it, so a test can show a Control call never does."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesResponse
from flwr.proto.message_pb2 import Message as ProtoMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.fleet_gateway import PullHold, create_app
from hub.rounds import connect, keeper
from hub.settings import HubSettings
from nexus_tools.processes import ServerThread, free_port
from nexus_wire.datadir import HubDataDir


class Upstream:
    """Answers every path, recording method, path, headers and body of each request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []

        async def record(request: Request) -> Response:
            body = await request.body()
            self.seen.append((request.method, request.url.path, dict(request.headers), body))
            return Response(b"reply:" + body, status_code=201, media_type="application/protobuf", headers={"x-up": "1"})

        methods = ["GET", "POST", "PUT", "DELETE"]
        self.server = ServerThread(Starlette(routes=[Route("/{path:path}", record, methods=methods)])).start()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.server.stop()


@pytest.fixture
def gateway(upstream: Upstream) -> Iterator[ServerThread]:
    server = ServerThread(create_app(upstream.server.url, verify=False)).start()
    yield server
    server.stop()


def test_a_fleet_call_goes_through_with_its_headers_and_body(upstream: Upstream, gateway: ServerThread) -> None:
    signed = {"flwr-public-key": "cHVi", "flwr-signature": "c2ln", "flwr-timestamp": "2026-01-01T00:00:00+00:00"}
    headers = {**signed, "content-type": "application/protobuf"}
    answer = httpx.post(gateway.url + "/v1/fleet/pull-messages", content=b"\x08\x01", headers=headers)
    assert answer.status_code == 201 and answer.content == b"reply:\x08\x01"
    assert answer.headers["content-type"] == "application/protobuf" and answer.headers["x-up"] == "1"
    ((method, path, seen_headers, body),) = upstream.seen
    assert (method, path, body) == ("POST", "/v1/fleet/pull-messages", b"\x08\x01")
    # SuperNode authentication signs these headers; the SuperLink behind checks them
    assert {k: seen_headers[k] for k in signed} == signed


@pytest.mark.parametrize(
    "method, target",
    [
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/runtime/acquire-task"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/health"),
        ("GET", "/v1/fleet/pull-messages"),
        ("POST", "/v1/fleet/pull-messages?x=1"),
        ("POST", "/v1/fleet/../control/start-run"),
        ("POST", "/v1/fleet/%2e%2e/control/start-run"),
        ("POST", "/v1/fleet/..%2fcontrol/start-run"),
        ("POST", "/v1/fleet//control/start-run"),
        ("POST", "/v1/fleet/Pull-Messages"),
        ("POST", "/v1/fleet/"),
    ],
)
def test_anything_but_a_fleet_call_is_refused_unforwarded(
    upstream: Upstream, gateway: ServerThread, method: str, target: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.request(method, target, body=b"x" if method == "POST" else None)  # the path as written, unnormalised
        answer = connection.getresponse()
        status, body = answer.status, answer.read()
    finally:
        connection.close()
    assert status == 404 and b"serves only Flower's Fleet API" in body
    assert upstream.seen == []


ADMIN = "the-admin-token"


@pytest.fixture
def admin_gateway(upstream: Upstream, tmp_path: Path) -> Iterator[ServerThread]:
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN + "\n")
    server = ServerThread(create_app(upstream.server.url, verify=False, admin_token_file=token_file)).start()
    yield server
    server.stop()


@pytest.mark.parametrize("call", ["list-runs", "stream-logs", "list-nodes"])
def test_the_admin_token_opens_the_read_only_control_calls(
    upstream: Upstream, admin_gateway: ServerThread, call: str
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/protobuf"}
    answer = httpx.post(f"{admin_gateway.url}/v1/control/{call}", content=b"\x08\x01", headers=headers)
    assert answer.status_code == 201 and answer.content == b"reply:\x08\x01"
    ((method, path, seen_headers, _),) = upstream.seen
    # the SuperLink never sees the hub's admin token (its no-op Control authn needs none)
    assert (method, path) == ("POST", f"/v1/control/{call}") and "authorization" not in seen_headers


@pytest.mark.parametrize(
    "target, authorization",
    [
        ("/v1/control/list-runs", None),
        ("/v1/control/list-runs", "Bearer wrong-token"),
        ("/v1/control/list-runs", f"Bearer {ADMIN}x"),
        ("/v1/control/list-runs", f"Basic {ADMIN}"),
        ("/v1/control/list-runs", ADMIN),
        ("/v1/control/start-run", f"Bearer {ADMIN}"),
        ("/v1/control/stop-run", f"Bearer {ADMIN}"),
        ("/v1/control/register-node", f"Bearer {ADMIN}"),
        ("/v1/control/list-runs?limit=1", f"Bearer {ADMIN}"),
        ("/v1/control/../control/start-run", f"Bearer {ADMIN}"),
        ("/v1/runtime/acquire-task", f"Bearer {ADMIN}"),
    ],
)
def test_no_token_a_wrong_one_or_a_writing_call_is_the_same_404(
    upstream: Upstream, admin_gateway: ServerThread, target: str, authorization: str | None
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", admin_gateway.port, timeout=10)
    try:
        headers = {} if authorization is None else {"Authorization": authorization}
        connection.request("POST", target, body=b"x", headers=headers)
        answer = connection.getresponse()
        status, body = answer.status, answer.read()
    finally:
        connection.close()
    assert status == 404 and b"serves only Flower's Fleet API" in body and b"token" not in body
    assert upstream.seen == []


def test_two_authorization_headers_or_no_token_file_open_nothing(upstream: Upstream, tmp_path: Path) -> None:
    server = ServerThread(create_app(upstream.server.url, verify=False, admin_token_file=tmp_path / "none")).start()
    try:
        alone = httpx.post(server.url + "/v1/control/list-runs", headers={"Authorization": f"Bearer {ADMIN}"})
    finally:
        server.stop()
    assert alone.status_code == 404
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN)
    server = ServerThread(create_app(upstream.server.url, verify=False, admin_token_file=token_file)).start()
    try:
        twice = httpx.post(
            server.url + "/v1/control/list-runs",
            headers=[("Authorization", f"Bearer {ADMIN}"), ("Authorization", f"Bearer {ADMIN}")],
        )
    finally:
        server.stop()
    assert twice.status_code == 404 and upstream.seen == []


def test_a_superlink_that_is_down_is_a_502() -> None:
    server = ServerThread(create_app(f"http://127.0.0.1:{free_port()}", verify=False)).start()
    try:
        answer = httpx.post(server.url + "/v1/fleet/send-node-heartbeat", content=b"")
    finally:
        server.stop()
    assert answer.status_code == 502 and "not reachable" in answer.json()["error"]


class Mailbox:
    """A stand-in SuperLink whose pull answer is empty until a message is dropped in."""

    def __init__(self) -> None:
        self.pulls: list[bytes] = []
        self.waiting = b""

        async def pull(request: Request) -> Response:
            self.pulls.append(await request.body())
            answer, self.waiting = self.waiting, b""
            return Response(answer, media_type="application/protobuf")

        self.server = ServerThread(Starlette(routes=[Route("/v1/fleet/pull-messages", pull, methods=["POST"])])).start()

    def drop(self) -> None:
        self.waiting = PullMessagesResponse(messages_list=[ProtoMessage()]).SerializeToString()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.server.stop()


def test_an_empty_pull_is_held_until_a_message_arrives(mailbox: Mailbox) -> None:
    server = ServerThread(create_app(mailbox.server.url, verify=False, hold=PullHold(hold_s=10.0))).start()
    try:
        threading.Timer(1.0, mailbox.drop).start()
        started = time.monotonic()
        answer = httpx.post(server.url + "/v1/fleet/pull-messages", content=b"\x08\x01", timeout=15)
        waited = time.monotonic() - started
    finally:
        server.stop()
    assert answer.status_code == 200 and len(PullMessagesResponse.FromString(answer.content).messages_list) == 1
    # answered when the message came (not after the hold), having asked again with the same body
    assert 0.9 < waited < 5.0 and len(mailbox.pulls) > 1 and set(mailbox.pulls) == {b"\x08\x01"}


def test_a_hold_ends_with_the_empty_answer(mailbox: Mailbox) -> None:
    server = ServerThread(create_app(mailbox.server.url, verify=False, hold=PullHold(hold_s=0.5))).start()
    try:
        started = time.monotonic()
        answer = httpx.post(server.url + "/v1/fleet/pull-messages", content=b"\x08\x01", timeout=15)
        waited = time.monotonic() - started
    finally:
        server.stop()
    assert answer.status_code == 200 and answer.content == b"" and 0.4 < waited < 5.0


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_the_superlink_listens_on_loopback_whatever_the_hub_host(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", host="0.0.0.0", superlink_port=9092)
    link = connect(settings)
    assert link is not None
    cmd = link.command()
    assert _flag(cmd, "--host") == "127.0.0.1" and "0.0.0.0" not in cmd
    assert _flag(cmd, "--isolation") == "process"
    assert _flag(cmd, "--superexec-auth-secret-file") == str(HubDataDir(settings.data_dir).superlink.superexec_secret)
    assert link.config.port != 9092 and link.config.address == f"127.0.0.1:{link.config.port}"
    # the hub's own `flwr` calls reach it there, and only there
    assert f'address = "127.0.0.1:{link.config.port}"' in link.write_connection().read_text()

    kept = keeper(settings, link)
    assert kept.gateway is not None and kept.guard is not None
    gateway = kept.gateway.command()
    assert (_flag(gateway, "--host"), _flag(gateway, "--port")) == ("0.0.0.0", "9092")
    assert _flag(gateway, "--upstream-port") == str(link.config.port)
    assert _flag(gateway, "--admin-token-file") == str(HubDataDir(settings.data_dir).admin_token)
    guard = kept.guard.command()
    assert guard[guard.index("-m") + 1 :][:2] == ["federated.app_guard", "serverapp"]
    assert _flag(guard, "--hub-key") == str(HubDataDir(settings.data_dir).signing_key)
    assert _flag(guard, "--apps") == str(HubDataDir(settings.data_dir).superlink.trusted_apps)


def test_tls_and_supernode_auth_reach_the_gateway_and_the_superlink(tmp_path: Path) -> None:
    tls = {f"superlink_ssl_{n}": tmp_path / n for n in ("ca_certfile", "certfile", "keyfile")}
    settings = HubSettings(data_dir=tmp_path / "hub", superlink_port=9092, superlink_supernode_auth=True, **tls)
    link = connect(settings)
    assert link is not None
    cmd = link.command()
    assert "--insecure" not in cmd and "--enable-supernode-auth" in cmd
    assert _flag(cmd, "--ssl-certfile") == str(tmp_path / "certfile")
    assert f'root-certificates = "{tmp_path / "ca_certfile"}"' in link.write_connection().read_text()
    kept = keeper(settings, link)
    assert kept.gateway is not None
    gateway = kept.gateway.command()
    assert _flag(gateway, "--ssl-keyfile") == str(tmp_path / "keyfile")
    assert _flag(gateway, "--ssl-ca-certfile") == str(tmp_path / "ca_certfile")


def test_supernode_auth_without_tls_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the SuperLink's TLS"):
        HubSettings(data_dir=tmp_path, superlink_port=9092, superlink_supernode_auth=True)
    with pytest.raises(ValueError, match="CA, the certificate and the key"):
        HubSettings(data_dir=tmp_path, superlink_port=9092, superlink_ssl_certfile=tmp_path / "c")
