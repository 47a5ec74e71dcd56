"""Tokens: the operator creates one-time enrollment tokens, and rotates the admin token."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import schemas
from hub.admin_rotation import rotate_admin
from hub.auth import Principal, hash_secret, new_secret
from hub.state import JSON_BODY_LIMIT, Hub, endpoint, store_call
from nexus_service.http import offload, parse_body
from nexus_wire.datadir import HubDataDir

log = logging.getLogger("nexus.hub")


@endpoint("admin")
async def create_token(request: Request, hub: Hub, principal: Principal) -> Response:
    # every field has a default: an empty body is a token without tags and the default lifetime
    body = await parse_body(request, schemas.TokenCreate, JSON_BODY_LIMIT, optional=True)
    token = new_secret()
    expires_at = hub.clock() + body.ttl_s
    await store_call(hub.store, hub.store.add_enroll_token, hash_secret(token), body.tags, expires_at)
    return JSONResponse({"token": token, "tags": body.tags, "expires_at": expires_at}, status_code=201)


@endpoint("admin")
async def rotate_admin_token(request: Request, hub: Hub, principal: Principal) -> Response:
    # a file write and a store compare-and-set: off the event loop
    token = await offload(rotate_admin, hub.store, hub.settings.data_dir, hub.auth)
    log.info("admin token rotated; the old one is refused from now on")
    # the caller proved the old token and may be on another host than the data dir: it gets the new one
    return JSONResponse({"token": token, "file": str(HubDataDir(hub.settings.data_dir).admin_token)})


def routes() -> list[Route]:
    return [
        Route("/v1/tokens", create_token, methods=["POST"]),
        Route("/v1/admin/rotate", rotate_admin_token, methods=["POST"]),
    ]
