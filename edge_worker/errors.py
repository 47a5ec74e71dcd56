"""Every error leaves the node as ``{"error": "..."}`` (the Open Inference Protocol's shape).

User mistakes get a 4xx naming the field or limit; anything unexpected is logged here
and answered with a bare 500, never a traceback.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from edge_worker.repository import ModelNotReady
from models.errors import DataError

log = logging.getLogger("nexus.edge")
M = TypeVar("M", bound=BaseModel)
_MAX_LISTED = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
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
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (before parsing)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length header is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    # Reads ASGI messages directly: Request.stream() is an async generator, and asyncio's
    # bookkeeping of one generator per request cost more CPU than the rest of the parsing.
    chunks = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def parse_body(request: Request, model: type[M], limit: int) -> M:
    body = await read_body(request, limit)
    if not body:
        raise ApiError(400, "empty body; expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise ApiError(400, f"body is not valid JSON ({exc.errors()[0]['msg']})") from None
        raise ApiError(422, describe(exc)) from None


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=exc.headers)


async def _data_error(request: Request, exc: Exception) -> Response:
    return error_response(422, str(exc))


async def _not_ready(request: Request, exc: Exception) -> Response:
    return error_response(503, str(exc), headers={"Retry-After": "1"})


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; see the node's log")


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    DataError: _data_error,
    ModelNotReady: _not_ready,
    Exception: _internal,
}
