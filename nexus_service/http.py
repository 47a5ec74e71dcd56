"""HTTP plumbing the edge and the hub share, so the same input gets the same error on both.

Every error leaves a service as ``{"error": "..."}`` (the Open Inference Protocol's shape):
user mistakes get a 4xx naming the field or limit; anything unexpected is logged and
answered with a bare 500, never a traceback. Authentication stays with each service
(operator token on the edge, roles on the hub).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from models.errors import NexusError
from nexus_wire.heads import HEADER, encode_header, http_binding, sign_receipt, utc_now

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
_MAX_LISTED = 5
#: bodies beyond this are not drained after the app answered: the receipt then covers what was read
DRAIN_LIMIT = 1 << 20
#: the scope key of a request's body deadline in seconds, and its value when no server set one
BODY_DEADLINE_KEY = "nexus.body_deadline_s"
BODY_DEADLINE_S = 10.0
#: the scope key of the bytes of request bodies one process holds at once, and its default
BODY_MEMORY_KEY = "nexus.body_memory_bytes"
BODY_MEMORY_BYTES = 32 << 20
#: an HTTP status, or a status and the headers to answer with (``Retry-After`` on a 503)
ErrorStatus = int | tuple[int, Mapping[str, str]]


class ApiError(NexusError):
    """A refusal with its HTTP status; the message is what the caller reads."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # e.g. a 429's Retry-After


class ClientAborted(ClientDisconnect):
    """The client went away before its body was all sent: not an error of ours, one INFO line."""

    def __init__(self, received: int) -> None:
        super().__init__(f"client went away after {received} bytes of the body")
        self.received = received


#: what the request metrics count an abort as (nginx's "client closed request"); nobody reads it
ABORTED = 499


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def describe(exc: ValidationError) -> str:
    """``field.path: problem; ...`` for the first few problems pydantic found."""
    parts = []
    for err in exc.errors(include_url=False)[:_MAX_LISTED]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - _MAX_LISTED
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (before parsing),
    with 408 when it has not all arrived within the server's body deadline (the scope's
    :data:`BODY_DEADLINE_KEY`, set by :mod:`nexus_service.serving`), and with 503 +
    ``Retry-After`` while the bodies being read already hold the process's body memory
    (:data:`BODY_MEMORY_KEY`): clients that stall mid-body must hold neither their
    connections nor, together, more memory than that."""
    deadline = request.scope.get(BODY_DEADLINE_KEY, BODY_DEADLINE_S)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length header is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    reservation = _Reservation(request.scope.get(BODY_MEMORY_KEY, BODY_MEMORY_BYTES))
    try:
        reservation.take(int(declared) if declared is not None else 0)
        with anyio.fail_after(deadline):
            return await _read_body(request, limit, reservation)
    except TimeoutError:
        raise ApiError(408, f"body not received within {deadline:g} s", {"Connection": "close"}) from None
    finally:
        reservation.release()


class _Reservation:
    """One body's share of the process's body memory (bytes reserved as they are declared or arrive)."""

    held = 0  # every body's, in this process (one event loop: no lock needed)

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        if size <= self.size:
            return
        more = size - self.size
        if _Reservation.held + more > self.budget:
            raise ApiError(503, "server busy reading other request bodies; retry later", {"Retry-After": "1"})
        _Reservation.held += more
        self.size = size

    def release(self) -> None:
        _Reservation.held -= self.size
        self.size = 0


async def _read_body(request: Request, limit: int, reservation: _Reservation) -> bytes:
    # Reads ASGI messages directly: Request.stream() is an async generator, and asyncio's
    # bookkeeping of one generator per request cost more CPU than the rest of the parsing.
    chunks = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientAborted(size)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds the limit of {limit} bytes")
        reservation.take(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def parse_body(request: Request, model: type[M], limit: int, *, optional: bool = False) -> M:
    """The body as ``model``. An empty body is refused unless the endpoint declares it
    ``optional`` (every field of ``model`` has a default): it then reads as ``{}``."""
    return validate_json(await read_body(request, limit), model, optional=optional)


def validate_json(body: bytes, model: type[M], *, optional: bool = False) -> M:
    """JSON ``body`` as ``model``, with :func:`parse_body`'s errors (for a body read some other way)."""
    if not body:
        if not optional:
            raise ApiError(400, "empty body; expected a JSON object")
        body = b"{}"
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise ApiError(400, f"body is not valid JSON ({exc.errors()[0]['msg']})") from None
        raise ApiError(422, describe(exc)) from None


async def offload(fn: Callable[..., T], *args: Any) -> T:
    """Always a worker thread: blocking or CPU-heavy work (hashing, signing, tar, processes)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def exception_handlers(
    log: logging.Logger, statuses: Mapping[type[Exception], ErrorStatus], service: str
) -> dict[Any, ExceptionHandler]:
    """The handlers both apps install. ``statuses`` maps the service's own exceptions (found
    by their class hierarchy, most specific first) to a status; ``service`` names whose log
    an unexpected error went to."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, headers=exc.headers)

    def mapped(status: int, headers: Mapping[str, str] | None) -> ExceptionHandler:
        async def handler(request: Request, exc: Exception) -> Response:
            if status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, exc)
            return error_response(status, str(exc), headers=headers)

        return handler

    async def client_gone(request: Request, exc: Exception) -> Response:
        # Starlette's own readers (request.body(), .form()) raise a bare ClientDisconnect
        received = exc.received if isinstance(exc, ClientAborted) else "?"
        log.info("client aborted %s %s after %s bytes of the body", request.method, request.url.path, received)
        return Response(status_code=ABORTED)  # uvicorn drops it: the connection is gone

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error; see the {service}'s log")

    handlers: dict[Any, ExceptionHandler] = {}
    for kind, status in statuses.items():
        code, headers = status if isinstance(status, tuple) else (status, None)
        handlers[kind] = mapped(code, headers)
    # Starlette picks the handler of the nearest class in the exception's MRO, so these win
    # over a service mapping of NexusError as a whole
    handlers.update(
        {ApiError: api_error, HTTPException: http_error, ClientDisconnect: client_gone, Exception: internal}
    )
    return handlers


_RECEIPT_SLOT = "nexus.receipt"


@dataclass
class _ReceiptSlot:
    """Who a request was authenticated as, for the middleware around the app: a mutable
    object in the scope, so the mark survives any layer that copies the scope."""

    node: str | None = None


def sign_receipt_for(request: Request, node_id: str) -> None:
    """Mark ``request`` as authenticated as node ``node_id``: its response then carries a signed
    receipt. Call only once the request's credential checked out; without a
    :class:`ReceiptMiddleware` around the app this does nothing."""
    slot = request.scope.get(_RECEIPT_SLOT)
    if isinstance(slot, _ReceiptSlot):
        slot.node = node_id


def request_target(scope: Scope) -> str:
    """The request target as received (path and query, percent-encoded): what a receipt binds."""
    raw = scope.get("raw_path") or urllib.parse.quote(scope["path"]).encode("ascii")
    query = scope.get("query_string", b"")
    return (raw + b"?" + query if query else raw).decode("latin-1")


class ReceiptMiddleware:
    """Pure ASGI: hashes the request body as the app reads it and, when the app marked the
    request as a node's (:func:`sign_receipt_for`, after authenticating it), adds a signed
    receipt (:mod:`nexus_wire.heads`) binding that node, the method, the request target and
    the body digest. ``wants(scope)`` picks the requests worth hashing at all (those that
    claim to be a node's). Anything else, a 401 or 403 included, gets no receipt: the hub
    signs nothing for a caller it does not know. A body the app did not read is drained
    first (up to :data:`DRAIN_LIMIT`), so the receipt covers all of it."""

    def __init__(self, app: ASGIApp, key: Ed25519PrivateKey, wants: Callable[[Scope], bool]) -> None:
        self.app = app
        self.key = key
        self.wants = wants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.wants(scope):
            await self.app(scope, receive, send)
            return
        slot = _ReceiptSlot()
        scope = {**scope, _RECEIPT_SLOT: slot}
        digest, size, done = hashlib.sha256(), 0, False

        async def counting_receive() -> Message:
            nonlocal size, done
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                digest.update(body)
                size += len(body)
                done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                done = True
            return message

        async def signing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and slot.node is not None:
                while not done and size <= DRAIN_LIMIT:
                    await counting_receive()
                binding = http_binding(slot.node, scope["method"], request_target(scope), digest.hexdigest(), size)
                receipt = sign_receipt(self.key, binding, utc_now())
                message["headers"] = [
                    *message.get("headers", []),
                    (HEADER.lower().encode(), encode_header(receipt).encode()),
                ]
            await send(message)

        await self.app(scope, counting_receive, signing_send)


#: a single byte range, the only form answered (``bytes=START-END``, ``START-``, ``-SUFFIX``)
_BYTE_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class RangeNotSatisfiable(ApiError):
    """416: the range starts past the end (``Content-Range: bytes */SIZE`` says the size)."""

    def __init__(self, size: int) -> None:
        super().__init__(416, f"range not satisfiable: the file has {size} bytes", {"Content-Range": f"bytes */{size}"})


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of an RFC 9110 ``Range`` header on a ``size``-byte body;
    ``None`` for the whole body: no header, or one this server ignores as the RFC allows (not
    bytes, several ranges, malformed). :class:`RangeNotSatisfiable` when it starts past the end."""
    match = _BYTE_RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, size if last == "" else min(size, int(last) + 1)
