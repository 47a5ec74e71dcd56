"""Models: pushes of signed bundles, the registry's views, bundle downloads (nodes and the
operator), and rollout actions (promote, assign, rollback).

Pushes and bundle downloads (megabytes hashed, signed, tarred) always run in a thread; a
download answers a single byte ``Range`` with 206, so an edge resumes a broken one.
"""

from __future__ import annotations

import logging
import re
import tempfile

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hub import promotion_gate, schemas
from hub.auth import Principal
from hub.state import JSON_BODY_LIMIT, Hub, endpoint, store_call
from models.bundle import BundleError
from nexus_service.http import byte_range, offload, parse_body, read_body

log = logging.getLogger("nexus.hub")
#: where hub.registry unpacks a push: the pusher's error names its bundle, not the hub's disk
_PUSH_DIR = re.compile(re.escape(tempfile.gettempdir()) + r"/nexus-push-[^/\s]+/?")


@endpoint("admin")
async def push_model(request: Request, hub: Hub, principal: Principal) -> Response:
    data = await read_body(request, hub.settings.max_upload_bytes)
    try:
        record, created = await offload(hub.registry.push, data, hub.settings.max_upload_bytes)
    except BundleError as exc:
        raise BundleError(_PUSH_DIR.sub("", str(exc))) from None
    log.info("push %s %s (created=%s)", record.model, record.version, created)
    return JSONResponse(
        {
            "model": record.model,
            "version": record.version,
            "created": created,
            "archive_sha256": record.archive_sha256,
        },
        status_code=201 if created else 200,
    )


@endpoint("admin")
async def list_models(request: Request, hub: Hub, principal: Principal) -> Response:
    return JSONResponse({"models": await store_call(hub.store, hub.registry.summary)})


@endpoint("admin")
async def show_model(request: Request, hub: Hub, principal: Principal) -> Response:
    return JSONResponse(await store_call(hub.store, hub.registry.show, request.path_params["model"]))


@endpoint("node", "admin")
async def bundle_file(request: Request, hub: Hub, principal: Principal) -> Response:
    p = request.path_params
    file = await offload(hub.registry.bundle_file, p["model"], p["version"], p["name"])
    # A Range (an edge resuming a broken download) is answered 206 with just that part, unless
    # an If-Range names other bytes than these (then the whole file, 200, as RFC 9110 says).
    try:
        if_range = request.headers.get("if-range")
        span = byte_range(request.headers.get("range"), file.size) if if_range in (None, file.etag) else None
    except BaseException:
        file.reader.close()
        raise
    start, end = span or (0, file.size)
    headers = {"Content-Length": str(end - start), "Accept-Ranges": "bytes", "ETag": file.etag}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{file.size}"
    # Streamed from the blob store chunk by chunk (each read in a worker thread): a large bundle
    # to many nodes at once costs a chunk per response, not the archive per request.
    return StreamingResponse(
        hub.registry.file_chunks(file, start, end),
        status_code=206 if span is not None else 200,
        media_type="application/octet-stream",
        headers=headers,
    )


@endpoint("admin")
async def promote(request: Request, hub: Hub, principal: Principal) -> Response:
    body = await parse_body(request, schemas.Promote, JSON_BODY_LIMIT)
    model = request.path_params["model"]
    # a refusal is a 409 whose error names the comparison (hub/promotion_gate.py)
    promote = hub.registry.promote
    action = await store_call(hub.store, promote, model, body.version, body.stage, body.percent, body.force)
    gate = await store_call(hub.store, hub.registry.gate, model, body.version)
    return JSONResponse(
        {
            "action": action.action_id,
            "kind": action.kind,
            "version": action.version,
            "percent": action.percent,
            "gate": gate,
            "forced": body.force and promotion_gate.refusal(model, body.version, gate) is not None,
        }
    )


@endpoint("admin")
async def assign(request: Request, hub: Hub, principal: Principal) -> Response:
    body = await parse_body(request, schemas.Assign, JSON_BODY_LIMIT)
    action = await store_call(
        hub.store, hub.registry.assign, request.path_params["model"], body.version, body.select, body.percent
    )
    return JSONResponse(
        {
            "action": action.action_id,
            "kind": action.kind,
            "version": action.version,
            "select": action.selector,
            "percent": action.percent,
        }
    )


@endpoint("admin")
async def rollback(request: Request, hub: Hub, principal: Principal) -> Response:
    action = await store_call(hub.store, hub.registry.rollback, request.path_params["model"])
    return JSONResponse(
        {
            "rolled_back": {
                "action": action.action_id,
                "kind": action.kind,
                "version": action.version,
                "selector": action.selector,
            }
        }
    )


def routes() -> list[Route]:
    return [
        Route("/v1/models", list_models),
        Route("/v1/models", push_model, methods=["POST"]),
        Route("/v1/models/{model}", show_model),
        Route("/v1/models/{model}/versions/{version}/files/{name}", bundle_file),
        Route("/v1/models/{model}/promote", promote, methods=["POST"]),
        Route("/v1/models/{model}/assign", assign, methods=["POST"]),
        Route("/v1/models/{model}/rollback", rollback, methods=["POST"]),
    ]
