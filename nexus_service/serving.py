"""The HTTP server options the edge and the hub both serve under (uvicorn, one place).

uvicorn bounds neither how long a client may take to send its headers nor how much of them
uvicorn keeps, and its own ``limit_concurrency`` answers a bare 503 without ``Retry-After``
(logging a warning per refusal, which a flood turns into a log flood). The protocol class
here adds those bounds to uvicorn's httptools protocol (uvicorn[standard] installs it). The
body deadline is :func:`nexus_service.http.read_body`'s: it finds it in the scope under
:data:`BODY_DEADLINE_KEY`.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import httptools
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nexus_service.http import BODY_DEADLINE_KEY, BODY_DEADLINE_S, BODY_MEMORY_BYTES, BODY_MEMORY_KEY


@dataclass(frozen=True)
class ServerLimits:
    #: open connections per worker process; the ones beyond get 503 + ``Retry-After``
    max_connections: int = 256
    #: seconds a client has to send a request's headers (from connecting or from its previous response)
    header_timeout_s: float = 10.0
    #: header bytes per request (a 400 beyond)
    max_header_bytes: int = 16 * 1024
    #: seconds a client has to send a whole body once its headers are in (408 beyond)
    body_deadline_s: float = BODY_DEADLINE_S
    #: bytes of request bodies a worker process holds at once; a body beyond gets 503 + ``Retry-After``
    body_memory_bytes: int = BODY_MEMORY_BYTES
    #: seconds an idle keep-alive connection stays open
    keep_alive_s: int = 5
    #: what ``Retry-After`` tells a refused client
    retry_after_s: int = 1


async def _busy(retry_after_s: int, scope: Scope, receive: Receive, send: Send) -> None:
    body = b'{"error": "server busy: too many open connections; retry later"}'
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Bounded:
    """Mixed into uvicorn's protocols (one instance per connection)."""

    limits: ServerLimits
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    app: Any

    def _bound(self, limits: ServerLimits) -> None:
        self.limits = limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        inner = self.app

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            scope[BODY_DEADLINE_KEY] = limits.body_deadline_s
            scope[BODY_MEMORY_KEY] = limits.body_memory_bytes
            await inner(scope, receive, send)

        self.app = app

    def _headers_pending(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _on_connect(self) -> None:
        # counted after uvicorn added this connection: the cap is the number served at once.
        # The refusal waits for the headers (bounded by the header timeout) so that the client,
        # having sent its request, reads the 503 rather than a reset.
        if len(self.connections) > self.limits.max_connections:
            self.app = functools.partial(_busy, self.limits.retry_after_s)
        self._arm()

    def _on_data(self) -> None:
        if self._headers_pending():
            self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._headers_pending() and not self.transport.is_closing():
            self.transport.close()

    def _disarm(self) -> None:
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


class BoundedHttpTools(_Bounded, HttpToolsProtocol):
    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bound(limits)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._on_connect()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._on_data()
        super().data_received(data)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        # uvicorn keeps every header httptools hands it; h11 has its own cap (h11_max_incomplete_event_size)
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise httptools.HttpParserError("request headers too large")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()


def _protocol(limits: ServerLimits) -> Any:
    return functools.partial(BoundedHttpTools, limits=limits)


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """The ``uvicorn.run`` keyword arguments that bound what a client can hold (a picklable
    protocol, so ``--workers`` > 1 takes it along into each worker process)."""
    return {
        "http": functools.partial(BoundedHttpTools, limits=limits),
        "timeout_keep_alive": limits.keep_alive_s,
        "timeout_graceful_shutdown": 10,
    }
