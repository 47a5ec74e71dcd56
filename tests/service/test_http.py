"""The same bad request gets the same error from the edge and the hub (nexus_service.http)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from edge_worker.app import create_app as create_edge
from edge_worker.settings import EdgeSettings
from hub.app import create_app as create_hub
from hub.settings import HubSettings
from hub.state import JSON_BODY_LIMIT

#: a JSON endpoint of each service that anyone may call (no credential gets in the way)
EDGE_PATH, HUB_PATH = "/v1/emotion", "/v1/enroll"


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, TestClient]]:
    root: Path = tmp_path_factory.mktemp("http")
    edge = create_edge(EdgeSettings(data_dir=root / "edge", max_body_bytes=JSON_BODY_LIMIT))
    hub = create_hub(HubSettings(data_dir=root / "hub"))
    for app in (edge, hub):
        app.router.routes.append(Route("/boom", _boom))
    with (
        TestClient(edge, raise_server_exceptions=False) as on_edge,
        TestClient(hub, raise_server_exceptions=False) as on_hub,
    ):
        yield on_edge, on_hub


async def _boom(request: Request) -> Response:
    raise RuntimeError("a bug, with details the caller must not see")


def _chunks(n: int) -> Iterator[bytes]:
    for _ in range(n):
        yield b" " * 4096


SAME: list[tuple[str, Callable[[], dict[str, Any]], int, str]] = [
    # (what, request kwargs (made per request: a generator body is spent once), status, error),
    # sent as POST to each service's JSON endpoint
    ("empty", lambda: {"content": b""}, 400, "empty body; expected a JSON object"),
    (
        "not JSON",
        lambda: {"content": b"{not json"},
        400,
        "body is not valid JSON (Invalid JSON: key must be a string at line 1 column 2)",
    ),
    (
        "not UTF-8",
        lambda: {"content": b"\xff\xfe"},
        400,
        "body is not valid JSON (Invalid JSON: expected value at line 1 column 1)",
    ),
    ("array", lambda: {"json": ["a"]}, 422, "body: Input should be an object"),
    ("number", lambda: {"json": 5}, 422, "body: Input should be an object"),
    ("null", lambda: {"content": b"null"}, 422, "body: Input should be an object"),
    (
        "oversize, declared",
        lambda: {"content": b" " * (JSON_BODY_LIMIT + 1)},
        413,
        f"body of {JSON_BODY_LIMIT + 1} bytes exceeds the limit of {JSON_BODY_LIMIT} bytes",
    ),
    (
        "oversize, chunked",
        lambda: {"content": _chunks(JSON_BODY_LIMIT // 4096 + 1)},
        413,
        f"body exceeds the limit of {JSON_BODY_LIMIT} bytes",
    ),
    (
        "Content-Length not a number",
        lambda: {"content": b"{}", "headers": {"Content-Length": "lots"}},
        400,
        "Content-Length header is not a number",
    ),
]


@pytest.mark.parametrize(("what", "request_kwargs", "status", "error"), SAME, ids=[c[0] for c in SAME])
def test_same_bad_body_same_error(
    clients: tuple[TestClient, TestClient],
    what: str,
    request_kwargs: Callable[[], dict[str, Any]],
    status: int,
    error: str,
) -> None:
    answers = []
    for client, path in zip(clients, (EDGE_PATH, HUB_PATH)):
        reply = client.post(path, **request_kwargs())
        answers.append((reply.status_code, reply.json()))
    assert answers[0] == answers[1] == (status, {"error": error})


def test_wrong_types_and_many_problems_read_alike(clients: tuple[TestClient, TestClient]) -> None:
    edge, hub = clients
    wrong_edge, wrong_hub = edge.post(EDGE_PATH, json={"text": 5}), hub.post(HUB_PATH, json={"token": 5})
    assert (wrong_edge.status_code, wrong_edge.json()) == (422, {"error": "text: Input should be a valid string"})
    assert (wrong_hub.status_code, wrong_hub.json()) == (422, {"error": "token: Input should be a valid string"})
    # every problem up to five is named, then how many more (the hub used to name only the first)
    extra = {f"x{i}": i for i in range(7)}
    many_edge, many_hub = edge.post(EDGE_PATH, json=extra), hub.post(HUB_PATH, json=extra)
    assert many_edge.status_code == many_hub.status_code == 422
    for reply, more in ((many_edge, 2), (many_hub, 3)):  # the hub's body also lacks its "token"
        *problems, rest = reply.json()["error"].split("; ")
        assert len(problems) == 5 and rest == f"and {more} more", reply.text


def test_unknown_route_and_wrong_method_same_error(clients: tuple[TestClient, TestClient]) -> None:
    for client, path in zip(clients, (EDGE_PATH, HUB_PATH)):
        missing = client.get("/v1/nowhere")
        assert (missing.status_code, missing.json()) == (404, {"error": "no route /v1/nowhere"})
        wrong = client.put(path, json={})
        assert (wrong.status_code, wrong.json()) == (405, {"error": f"method PUT not allowed on {path}"})
        assert "POST" in wrong.headers["allow"]


def test_unexpected_errors_are_a_bare_500_and_logged(
    clients: tuple[TestClient, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    for client, service in zip(clients, ("node", "hub")):
        reply = client.get("/boom")
        assert (reply.status_code, reply.json()) == (500, {"error": f"internal error; see the {service}'s log"})
    assert [r.exc_info[1].args[0] for r in caplog.records if r.exc_info and r.exc_info[1]] == [
        "a bug, with details the caller must not see"
    ] * 2


def test_a_body_declared_optional_may_be_empty(clients: tuple[TestClient, TestClient]) -> None:
    """POST /v1/tokens takes all-default fields: no body is a token without tags, as before."""
    hub = clients[1]
    token = (Path(hub.app.state.hub.settings.data_dir) / "admin.token").read_text().strip()
    reply = hub.post("/v1/tokens", headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 201 and reply.json()["tags"] == {}
