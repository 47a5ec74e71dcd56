"""The hub's Starlette app: enrollment, heartbeats, assignments, bundle downloads, and
the operator API the CLI (and later the dashboard) uses.

Store calls to a network store (Redis) run in a worker thread, so an outage stalls a
request, not the event loop; SQLite calls (microseconds, local) run inline, because a
thread hop per call costs more than the query on a busy machine. Pushes and bundle
downloads (megabytes hashed, signed, tarred) always run in a thread.
Errors are JSON ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import audit_heads, schemas
from hub.auth import (
    NODE_PREFIX,
    Authenticator,
    AuthError,
    Principal,
    Role,
    check_store_admin,
    hash_secret,
    load_or_create_admin_token,
    new_secret,
)
from hub.keys import check_store_key, load_or_create_key, public_key_b64
from hub.registry import Conflict, NotFound, Registry
from hub.settings import HubSettings
from hub.store.base import NodeRecord, Store, StoreUnavailable, open_store
from models.bundle import BundleError, key_id
from models.errors import NexusError
from models.receipts import ReceiptMiddleware

log = logging.getLogger("nexus.hub")
T = TypeVar("T")
JSON_BODY_LIMIT = 64 << 10


class BadRequest(NexusError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Hub:
    settings: HubSettings
    store: Store
    registry: Registry
    auth: Authenticator
    public_key: str
    key_id: str
    clock: Callable[[], float] = time.time


async def store_call(store: Store, fn: Callable[..., T], *args: Any) -> T:
    if store.network_io:
        return await offload(fn, *args)
    return fn(*args)


async def offload(fn: Callable[..., T], *args: Any) -> T:
    """Always a worker thread: CPU-heavy work (hashing, signing, tar) on megabytes."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {declared} bytes exceeds the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body exceeds the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    raw = await read_body(request, JSON_BODY_LIMIT)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}", 422) from None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status_of(exc: NexusError) -> int:
    if isinstance(exc, (AuthError, BadRequest)):
        return exc.status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, StoreUnavailable):
        return 503
    if isinstance(exc, BundleError):
        return 422
    return 400


async def _nexus_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NexusError)
    status = _status_of(exc)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return _error(status, str(exc))


def _node_view(node: NodeRecord, now: float, offline_after_s: float) -> dict[str, Any]:
    online = node.last_seen is not None and now - node.last_seen <= offline_after_s
    return {
        "node_id": node.node_id,
        "tags": node.tags,
        "enrolled_at": node.enrolled_at,
        "last_seen": node.last_seen,
        "status": "online" if online else "offline",
        "heartbeat": node.heartbeat,
    }


_NODE_BEARER = f"Bearer {NODE_PREFIX}".encode()


def _from_a_node(scope: Any) -> bool:
    """Enrollment, or a request with a node credential (whatever endpoint it is for)."""
    if scope["path"] == "/v1/enroll":
        return True
    return any(name == b"authorization" and value.startswith(_NODE_BEARER) for name, value in scope["headers"])


Handler = Callable[..., Awaitable[Response]]


def endpoint(hub: Hub, *roles: Role) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Authenticate before the handler runs (it then gets the ``Principal``); no roles: public.

    Later API modules (funnels, rounds) build their routes with this, ``store_call`` and
    ``parse_body``, so every endpoint authenticates and fails the same way.
    """

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            if not roles:
                return await handler(request)
            principal = await store_call(hub.store, hub.auth.require, request.headers.get("authorization"), *roles)
            return await handler(request, principal)

        return run

    return wrap


def build_hub(settings: HubSettings, store: Store | None = None) -> Hub:
    """Open the store and the data dir's secrets; refuse a store another hub key owns."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the key and admin token
    store = store or open_store(settings.store_url())
    key = load_or_create_key(settings.data_dir)
    admin_token = load_or_create_admin_token(settings.data_dir)
    check_store_key(store, key)
    check_store_admin(store, admin_token)
    return Hub(
        settings,
        store,
        Registry(store, key),
        Authenticator(store, admin_token),
        public_key_b64(key),
        key_id(key.public_key()),
    )


def create_app(settings: HubSettings, store: Store | None = None) -> Starlette:
    hub = build_hub(settings, store)

    # -- public ---------------------------------------------------------------------------
    @endpoint(
        hub,
    )
    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "public_key": hub.public_key,
                "key_id": hub.key_id,
                "poll_interval_s": settings.poll_interval_s,
                "superlink": settings.superlink_address(),
            }
        )

    @endpoint(
        hub,
    )
    async def healthz(request: Request) -> Response:
        await store_call(hub.store, hub.store.ping)
        return JSONResponse({"status": "ok"})

    @endpoint(
        hub,
    )
    async def enroll(request: Request) -> Response:
        body: schemas.Enroll = await parse_body(request, schemas.Enroll)
        tags = await store_call(hub.store, hub.store.take_enroll_token, hash_secret(body.token), hub.clock())
        if tags is None:
            raise AuthError(401, "enrollment token is unknown, used or expired")
        node_id = "n-" + uuid.uuid4().hex[:16]
        secret = new_secret()
        await store_call(hub.store, hub.store.add_node, NodeRecord(node_id, hash_secret(secret), tags, hub.clock()))
        log.info("enrolled node %s tags=%s", node_id, tags)
        return JSONResponse(
            {
                "node_id": node_id,
                "node_secret": secret,
                "tags": tags,
                "public_key": hub.public_key,
                "poll_interval_s": settings.poll_interval_s,
            },
            status_code=201,
        )

    # -- nodes ----------------------------------------------------------------------------
    @endpoint(hub, "node")
    async def heartbeat(request: Request, principal: Principal) -> Response:
        body: schemas.Heartbeat = await parse_body(request, schemas.Heartbeat)
        assert principal.node is not None
        now = hub.clock()
        # principal.node was read from the store for this request: it holds the last heartbeat
        beat, regression = audit_heads.track(principal.node.heartbeat, body.model_dump(), now)
        if regression is not None:
            log.warning("node %s: %s", principal.node.node_id, audit_heads.describe(regression))
        await store_call(hub.store, hub.store.record_heartbeat, principal.node.node_id, now, beat)
        # "superlink": where this node's SuperNode joins (edges started with --superlink auto)
        return JSONResponse({"poll_interval_s": settings.poll_interval_s, "superlink": settings.superlink_address()})

    @endpoint(hub, "node")
    async def my_assignments(request: Request, principal: Principal) -> Response:
        assert principal.node is not None
        assignments = await store_call(hub.store, hub.registry.assignments_for, principal.node)
        body = {
            "node_id": principal.node.node_id,
            "models": {
                m: {"version": a.version, "archive_sha256": a.archive_sha256, "archive_bytes": a.archive_bytes}
                for m, a in assignments.items()
            },
        }
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        etag = '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(raw, media_type="application/json", headers={"ETag": etag})

    @endpoint(hub, "node", "admin")
    async def bundle_file(request: Request, principal: Principal) -> Response:
        p = request.path_params
        data = await offload(hub.registry.bundle_file, p["model"], p["version"], p["name"])
        return Response(data, media_type="application/octet-stream")

    # -- operator -------------------------------------------------------------------------
    @endpoint(hub, "admin")
    async def create_token(request: Request, principal: Principal) -> Response:
        body: schemas.TokenCreate = await parse_body(request, schemas.TokenCreate)
        token = new_secret()
        expires_at = hub.clock() + body.ttl_s
        await store_call(hub.store, hub.store.add_enroll_token, hash_secret(token), body.tags, expires_at)
        return JSONResponse({"token": token, "tags": body.tags, "expires_at": expires_at}, status_code=201)

    @endpoint(hub, "admin")
    async def list_nodes(request: Request, principal: Principal) -> Response:
        nodes = await store_call(hub.store, hub.store.list_nodes)
        now = hub.clock()
        return JSONResponse({"nodes": [_node_view(n, now, settings.offline_after_s) for n in nodes]})

    @endpoint(hub, "admin")
    async def push_model(request: Request, principal: Principal) -> Response:
        data = await read_body(request, settings.max_upload_bytes)
        record, created = await offload(hub.registry.push, data)
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

    @endpoint(hub, "admin")
    async def list_models(request: Request, principal: Principal) -> Response:
        return JSONResponse({"models": await store_call(hub.store, hub.registry.summary)})

    @endpoint(hub, "admin")
    async def show_model(request: Request, principal: Principal) -> Response:
        return JSONResponse(await store_call(hub.store, hub.registry.show, request.path_params["model"]))

    @endpoint(hub, "admin")
    async def promote(request: Request, principal: Principal) -> Response:
        body: schemas.Promote = await parse_body(request, schemas.Promote)
        action = await store_call(
            hub.store, hub.registry.promote, request.path_params["model"], body.version, body.stage, body.percent
        )
        return JSONResponse(
            {"action": action.action_id, "kind": action.kind, "version": action.version, "percent": action.percent}
        )

    @endpoint(hub, "admin")
    async def assign(request: Request, principal: Principal) -> Response:
        body: schemas.Assign = await parse_body(request, schemas.Assign)
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

    @endpoint(hub, "admin")
    async def rollback(request: Request, principal: Principal) -> Response:
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

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(getattr(exc, "status_code", 404), getattr(exc, "detail", "not found"))

    routes = [
        Route("/healthz", healthz),
        Route("/v1/hub", info),
        Route("/v1/enroll", enroll, methods=["POST"]),
        Route("/v1/nodes/me/heartbeat", heartbeat, methods=["POST"]),
        Route("/v1/nodes/me/assignments", my_assignments),
        Route("/v1/nodes", list_nodes),
        Route("/v1/tokens", create_token, methods=["POST"]),
        Route("/v1/models", list_models),
        Route("/v1/models", push_model, methods=["POST"]),
        Route("/v1/models/{model}", show_model),
        Route("/v1/models/{model}/versions/{version}/files/{name}", bundle_file),
        Route("/v1/models/{model}/promote", promote, methods=["POST"]),
        Route("/v1/models/{model}/assign", assign, methods=["POST"]),
        Route("/v1/models/{model}/rollback", rollback, methods=["POST"]),
    ]
    from hub import funnels_api  # imported here: it imports this module

    routes += funnels_api.routes(hub)
    from hub import rounds_api  # imported here: it imports this module

    rounds = rounds_api.build(hub)
    routes += rounds_api.routes(hub, rounds)
    from hub.dashboard import dashboard_routes  # imported here: the dashboard imports this module

    routes += dashboard_routes(hub, rounds)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop_thompson = funnels_api.start_thompson(hub)
        stop_rounds = await rounds_api.start(rounds)  # the SuperLink child and the run watcher
        yield
        await stop_rounds()
        stop_thompson()
        hub.store.close()

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={NexusError: _nexus_error, HTTPException: not_found}
    )
    # every node request is answered with a signed receipt of the body the hub read (docs/privacy.md)
    app.add_middleware(ReceiptMiddleware, key=hub.registry.key, wants=_from_a_node)
    app.state.hub = hub
    return app
