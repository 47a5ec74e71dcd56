"""What the hub's API modules and dashboard share: the :class:`Hub` (held on ``app.state.hub``),
``store_call``, and :func:`endpoint`, the one place a request is authenticated.

Store calls to a network store (Redis) run in a worker thread, so an outage stalls a
request, not the event loop; SQLite calls (microseconds, local) run inline, because a
thread hop per call costs more than the query on a busy machine.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from hub.admin_rotation import finish_rotation
from hub.auth import (
    Authenticator,
    AuthError,
    Principal,
    RevokedCredential,
    Role,
    check_store_admin,
    load_or_create_admin_token,
)
from hub.keys import check_store_key
from hub.registry import Registry
from hub.rounds import Rounds
from hub.settings import HubSettings
from hub.store import open_store
from hub.store.base import Store
from nexus_service.http import offload, sign_receipt_for
from nexus_service.keyfiles import load_or_create_key, private_dir, public_key_b64
from nexus_service.rate_limit import Rate, TokenBuckets, client_address
from nexus_wire.datadir import HubDataDir
from nexus_wire.heads import key_id

T = TypeVar("T")
#: the largest JSON body of any hub endpoint (bundle pushes have their own limit)
JSON_BODY_LIMIT = 64 << 10

Endpoint = Callable[[Request], Awaitable[Response]]
PublicHandler = Callable[[Request, "Hub"], Awaitable[Response]]
Handler = Callable[[Request, "Hub", Principal], Awaitable[Response]]


@dataclass
class Hub:
    settings: HubSettings
    store: Store
    registry: Registry
    auth: Authenticator
    public_key: str
    key_id: str
    #: federated runs on the SuperLink (started and stopped by the app's lifespan)
    rounds: Rounds
    #: per client address: wrong credentials (API and dashboard login), failed enrollments
    auth_failures: TokenBuckets
    enroll_failures: TokenBuckets
    clock: Callable[[], float] = time.time


async def store_call(store: Store, fn: Callable[..., T], *args: Any) -> T:
    if store.network_io:
        return await offload(fn, *args)
    return fn(*args)


def build_hub(settings: HubSettings, store: Store | None = None) -> Hub:
    """Open the store and the data dir's secrets; refuse a store another hub key owns."""
    private_dir(settings.data_dir)  # holds the key, the admin token and the embedded store
    store = store or open_store(settings.store_url())
    key = load_or_create_key(HubDataDir(settings.data_dir).signing_key)
    finish_rotation(store, settings.data_dir)  # a rotate-admin a crash interrupted
    admin_token = load_or_create_admin_token(settings.data_dir)
    check_store_key(store, key)
    check_store_admin(store, admin_token)
    registry = Registry(store, key)
    return Hub(
        settings,
        store,
        registry,
        Authenticator(store, admin_token),
        public_key_b64(key.public_key()),
        key_id(key.public_key()),
        Rounds(settings, store, registry),
        TokenBuckets("wrong credentials", Rate(settings.auth_failure_burst, settings.auth_failure_per_s)),
        TokenBuckets("failed enrollments", Rate(settings.enroll_failure_burst, settings.enroll_failure_per_s)),
    )


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def public(handler: PublicHandler) -> Endpoint:
    """An endpoint anyone may call (health, hub info, enrollment with its one-time token)."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        return await handler(request, hub_of(request))

    return run


async def authenticate(hub: Hub, request: Request, *roles: Role) -> Principal:
    """``hub.auth.require`` under the wrong-credential limit of the caller's address."""
    address = client_address(request)
    hub.auth_failures.check(address)
    authorization = request.headers.get("authorization")
    try:
        return await store_call(hub.store, hub.auth.require, authorization, *roles)
    except RevokedCredential:
        raise  # a real credential, just ended: not a guess
    except AuthError as exc:
        if exc.status == 401 and authorization:  # a guess; no credential at all guesses nothing
            hub.auth_failures.spend(address)
        raise


def endpoint(*roles: Role) -> Callable[[Handler], Endpoint]:
    """Authenticate before the handler runs (it then gets the ``Principal``): 401 without a
    known credential, 403 without one of ``roles``. A node's request that got through gets
    the hub's signed receipt (nexus_service.http.ReceiptMiddleware); no other does. A wrong
    credential spends one of its address's tokens (``Hub.auth_failures``): an address with
    none left is answered 429 before its credential is looked at, even a right one."""
    if not roles:
        raise ValueError("an endpoint needs a role; use public() for one without credentials")

    def wrap(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            hub = hub_of(request)
            principal = await authenticate(hub, request, *roles)
            if principal.node is not None:  # a node's request: the hub signs a receipt for it
                sign_receipt_for(request, principal.node.node_id)
            return await handler(request, hub, principal)

        return run

    return wrap
