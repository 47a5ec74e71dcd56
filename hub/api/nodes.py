"""Nodes: enrollment (public, with a one-time token), heartbeats and assignments (the
node's own credential), and the operator's node list. The assignments are a document signed
with the hub's key for that node (nexus_wire/signed_assignments.py), so neither the link nor
a proxy on it can change what a node installs."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import audit_heads, schemas
from hub.auth import AuthError, Principal, hash_secret, new_secret
from hub.registry import NotFound
from hub.state import JSON_BODY_LIMIT, Hub, NodeWrite, endpoint, node_write, public, spend_failure, store_call
from hub.store.base import NodeRecord
from nexus_service.http import parse_body, sign_receipt_for
from nexus_service.rate_limit import client_address
from nexus_wire.heads import canonical_json
from nexus_wire.signed_assignments import sign_document

log = logging.getLogger("nexus.hub")
#: what a heartbeat's store write hands back: the stored heartbeat and a newly seen regression
Tracked = tuple[dict[str, Any], dict[str, Any] | None]


def node_view(node: NodeRecord, now: float, offline_after_s: float) -> dict[str, Any]:
    online = node.last_seen is not None and now - node.last_seen <= offline_after_s
    return {
        "node_id": node.node_id,
        "tags": node.tags,
        "enrolled_at": node.enrolled_at,
        "last_seen": node.last_seen,
        "status": "revoked" if node.revoked_at is not None else "online" if online else "offline",
        "revoked_at": node.revoked_at,
        "heartbeat": node.heartbeat,
    }


@public
async def enroll(request: Request, hub: Hub) -> Response:
    body = await parse_body(request, schemas.Enroll, JSON_BODY_LIMIT)
    address = client_address(request)
    hub.enroll_failures.check(address)  # an address that guessed too often: 429 before it guesses again
    tags = await store_call(hub.store, hub.store.take_enroll_token, hash_secret(body.token), hub.clock())
    if tags is None:
        await spend_failure(hub, hub.enroll_failures, address)
        raise AuthError(401, "enrollment token is unknown, used or expired")
    node_id = "n-" + uuid.uuid4().hex[:16]
    secret = new_secret()
    await store_call(hub.store, hub.store.add_node, NodeRecord(node_id, hash_secret(secret), tags, hub.clock()))
    # the one-time token authenticated the caller as this new node: its first receipt
    sign_receipt_for(request, node_id)
    log.info("enrolled node %s tags=%s", node_id, tags)
    return JSONResponse(
        {
            "node_id": node_id,
            "node_secret": secret,
            "tags": tags,
            "public_key": hub.public_key,
            "poll_interval_s": hub.settings.poll_interval_s,
        },
        status_code=201,
    )


@node_write
async def heartbeat(request: Request, hub: Hub, write: NodeWrite) -> Response:
    body = (await write.body(schemas.Heartbeat, JSON_BODY_LIMIT)).model_dump()
    node_id, now = write.credential.node_id, hub.clock()

    # the store hands in the node's stored heartbeat: it holds the head to check this one's
    # proof against. Inline: checking a consistency proof is a few dozen hashes, less than a
    # hop to a thread.
    def track(previous: dict[str, Any] | None) -> tuple[dict[str, Any], Tracked]:
        beat, regression = audit_heads.track(previous, body, now)
        return beat, (beat, regression)

    status, tracked = await hub.store.heartbeat_node(node_id, write.credential.secret_hash, now, track)
    await write.settle(status)
    assert tracked is not None
    beat, regression = tracked
    if regression is not None:
        log.warning("node %s: %s", node_id, audit_heads.describe(regression))
    # "superlink": where this node's SuperNode joins (edges started with --superlink auto);
    # "audit_held": the head the node's next heartbeat proves consistency from
    return JSONResponse(
        {
            "poll_interval_s": hub.settings.poll_interval_s,
            "superlink": hub.settings.superlink_address(),
            "audit_held": audit_heads.held_answer(beat),
        }
    )


@endpoint("node")
async def my_assignments(request: Request, hub: Hub, principal: Principal) -> Response:
    assert principal.node is not None
    assignments = await store_call(hub.store, hub.registry.assignments_for, principal.node)
    node_id = principal.node.node_id
    models = {
        m: {"version": a.version, "archive_sha256": a.archive_sha256, "archive_bytes": a.archive_bytes}
        for m, a in assignments.items()
    }
    # the tag covers what is assigned, not when it was signed: an unchanged assignment stays a 304
    unsigned = json.dumps({"node_id": node_id, "models": models}, sort_keys=True, separators=(",", ":")).encode()
    etag = '"' + hashlib.sha256(unsigned).hexdigest()[:32] + '"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    # inline like the receipts: one Ed25519 signature costs less than a hop to a worker thread
    document = sign_document(hub.registry.key, node_id, models, hub.clock())
    return Response(canonical_json(document).encode("utf-8"), media_type="application/json", headers={"ETag": etag})


@endpoint("admin")
async def list_nodes(request: Request, hub: Hub, principal: Principal) -> Response:
    nodes = await store_call(hub.store, hub.store.list_nodes)
    now = hub.clock()
    return JSONResponse({"nodes": [node_view(n, now, hub.settings.offline_after_s) for n in nodes]})


@endpoint("admin")
async def revoke_node(request: Request, hub: Hub, principal: Principal) -> Response:
    node_id = request.path_params["node_id"]
    node = await store_call(hub.store, hub.store.revoke_node, node_id, hub.clock())
    if node is None:
        raise NotFound(f"no node {node_id}")
    log.info("revoked node %s", node_id)
    return JSONResponse(node_view(node, hub.clock(), hub.settings.offline_after_s))


def routes() -> list[Route]:
    return [
        Route("/v1/enroll", enroll, methods=["POST"]),
        Route("/v1/nodes/me/heartbeat", heartbeat, methods=["POST"]),
        Route("/v1/nodes/me/assignments", my_assignments),
        Route("/v1/nodes", list_nodes),
        Route("/v1/nodes/{node_id}/revoke", revoke_node, methods=["POST"]),
    ]
