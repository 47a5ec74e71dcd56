"""A relay of a Runtime API (a SuperNode's or the SuperLink's) for the apps an app guard launches.

Flower's runtime, finding an object of a message "not available" yet, backs off a whole second,
then two (flwr/supercore/inflatable/inflatable_utils.py). Two such races are routine once rounds
are fast: a SuperNode creates a message's task before it has pulled the message's objects (its
arrays) from the SuperLink, so a ClientApp launched warm (federated/warm_app.py), which starts in
milliseconds, asks for them too early (a cold ``flwr-clientapp`` spends that second importing);
and the ServerApp, polling often (federated/polling_grid.py), sees a reply before the SuperNode
has uploaded its objects. So the apps a guard launches talk to their Runtime API through this
relay, which forwards every call byte for byte (the task's token included) and holds a
``pull-object`` answer "found, not yet available" while it asks again every :data:`OBJECT_POLL_S`
(nexus_service/long_poll.py), for up to :data:`OBJECT_HOLD_S`.

It runs in the guard's process, on a loopback port of its own, and only in front of a plain-HTTP
Runtime API on loopback (a TLS one is used directly, without the relay). It adds no credential:
what a caller may do is what its token lets it do there.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nexus_service.http import error_response
from nexus_service.long_poll import answer_headers, ask_until, forwarded_headers, object_on_its_way, send_raw

OBJECT_PATH = "/v1/runtime/pull-object"
OBJECT_POLL_S, OBJECT_HOLD_S = 0.02, 5.0


def create_app(upstream: str) -> Starlette:
    """The relay in front of the Runtime API at ``upstream`` (``http://127.0.0.1:PORT``)."""
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(60.0, connect=10.0))

    async def forward(request: Request) -> Response:
        path = request.url.path
        if request.method != "POST" or not path.startswith("/v1/runtime/") or request.url.query:
            return error_response(404, f"no route {request.method} {path}: this port relays a Runtime API")
        body, headers = await request.body(), forwarded_headers(request.headers.raw)
        try:
            if path == OBJECT_PATH:
                answer, raw, _ = await ask_until(
                    lambda: send_raw(client, path, headers, body),
                    object_on_its_way,
                    OBJECT_HOLD_S,
                    lambda: OBJECT_POLL_S,
                    request.is_disconnected,
                )
            else:
                answer, raw = await send_raw(client, path, headers, body)
        except httpx.HTTPError:
            return error_response(502, "the SuperNode's Runtime API is not reachable")
        return Response(raw, status_code=answer.status_code, headers=answer_headers(answer))

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


class Relay:
    """The relay under uvicorn in a daemon thread of the guard, on a loopback port bound at once."""

    def __init__(self, runtime_api_address: str) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            create_app(f"http://{runtime_api_address}"), log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, timeout: float = 10.0) -> Relay:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"the Runtime API relay did not start on {self.address}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()
