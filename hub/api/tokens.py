"""Enrollment tokens: the operator creates one-time tokens a node enrolls with."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import schemas
from hub.auth import Principal, hash_secret, new_secret
from hub.state import JSON_BODY_LIMIT, Hub, endpoint, store_call
from nexus_service.http import parse_body


@endpoint("admin")
async def create_token(request: Request, hub: Hub, principal: Principal) -> Response:
    # every field has a default: an empty body is a token without tags and the default lifetime
    body = await parse_body(request, schemas.TokenCreate, JSON_BODY_LIMIT, optional=True)
    token = new_secret()
    expires_at = hub.clock() + body.ttl_s
    await store_call(hub.store, hub.store.add_enroll_token, hash_secret(token), body.tags, expires_at)
    return JSONResponse({"token": token, "tags": body.tags, "expires_at": expires_at}, status_code=201)


def routes() -> list[Route]:
    return [Route("/v1/tokens", create_token, methods=["POST"])]
