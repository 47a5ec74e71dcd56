"""What the hub's API modules and dashboard share: the :class:`Hub` (held on ``app.state.hub``),
``store_call``, and :func:`endpoint` and :func:`node_write`, the places a request is authenticated.

Store calls to a network store (Redis) run in a worker thread, so an outage stalls a
request, not the event loop; SQLite calls (microseconds, local) run inline, because a
thread hop per call costs more than the query on a busy machine. A node's credential is
checked on the event loop by the store itself (``Store.check_node``: one round trip, no
thread), and a heartbeat checks it in the same round trip as its write (:func:`node_write`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from hub.admin_rotation import finish_rotation
from hub.auth import (
    Authenticator,
    AuthError,
    NodeCredential,
    Principal,
    RevokedCredential,
    Role,
    check_store_admin,
    has_role,
    load_or_create_admin_token,
)
from hub.blobs import open_blob_store
from hub.keys import check_store_key
from hub.lease import ROUNDS_LEASE, FencedStore, Holder, Lease
from hub.registry import Registry
from hub.rounds import Rounds
from hub.settings import HubSettings
from hub.store import open_store
from hub.store.base import NodeCheck, NodeStatus, Store, StoreUnavailable
from nexus_service.http import ApiError, parse_body, sign_receipt_for
from nexus_service.keyfiles import load_or_create_key, private_dir, public_key_b64
from nexus_service.rate_limit import Rate, TokenBuckets, client_address
from nexus_wire.datadir import HubDataDir
from nexus_wire.heads import key_id

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
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
    #: the rounds driver's lease: held by exactly one replica at a time (hub/driver.py)
    lease: Lease
    clock: Callable[[], float] = time.time


async def store_call(store: Store, fn: Callable[..., T], *args: Any) -> T:
    return await store.blocking(fn, *args)


def build_hub(settings: HubSettings, store: Store | None = None) -> Hub:
    """Open the store and the data dir's secrets; refuse a store another hub key owns."""
    private_dir(settings.data_dir)  # holds the key, the admin token and the embedded store
    store = store or open_store(settings.store_url())
    key = load_or_create_key(HubDataDir(settings.data_dir).signing_key)
    finish_rotation(store, settings.data_dir)  # a rotate-admin a crash interrupted
    admin_token = load_or_create_admin_token(settings.data_dir)
    check_store_key(store, key)
    check_store_admin(store, admin_token)
    registry = Registry(store, key, open_blob_store(settings.blobs_url()))
    lease = Lease(store, ROUNDS_LEASE, Holder.this_process(settings.replica_url()), settings.lease_ttl_s)
    return Hub(
        settings,
        store,
        registry,
        Authenticator(store, admin_token),
        public_key_b64(key.public_key()),
        key_id(key.public_key()),
        # the driver's run and round writes are fenced by its lease (hub/lease.py)
        Rounds(settings, FencedStore(store, lease).as_store(), registry),
        TokenBuckets("wrong credentials", Rate(settings.auth_failure_burst, settings.auth_failure_per_s)),
        TokenBuckets("failed enrollments", Rate(settings.enroll_failure_burst, settings.enroll_failure_per_s)),
        lease,
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
        return has_role(await hub.auth.identify_async(authorization), *roles)
    except RevokedCredential:
        raise  # a real credential, just ended: not a guess
    except AuthError as exc:
        if exc.status == 401 and authorization:  # a guess; no credential at all guesses nothing
            await spend_failure(hub, hub.auth_failures, address)
        raise


async def spend_failure(hub: Hub, buckets: TokenBuckets, address: str) -> None:
    """Spend one of ``address``'s tokens here and in the store's bucket every replica shares:
    a client spreading its guesses over the replicas gets one bucket, not one per replica.
    This replica refuses the address (``check``) once the shared bucket is empty, at the latest
    one failure after another replica emptied it. Only failures pay the store call."""
    buckets.spend(address)
    bucket = buckets.what.replace(" ", "_")
    try:
        left = await store_call(
            hub.store, hub.store.spend_rate_token, bucket, address, buckets.rate.burst, buckets.rate.per_s
        )
    except StoreUnavailable:
        return  # this replica's own bucket still counts
    buckets.observe(address, left)


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


class NodeWrite:
    """A node's request whose store write also checks its credential (:func:`node_write`):
    the credential as shown, and :meth:`settle` for the store's verdict."""

    def __init__(self, hub: Hub, request: Request, credential: NodeCredential, address: str) -> None:
        self.hub, self.request, self.credential, self.address = hub, request, credential, address

    async def body(self, model: type[M], limit: int) -> M:
        """The parsed body; when it is bad, the credential is checked first, so a wrong one is
        still a 401 (as on :func:`endpoint`, where it is checked before the body is read)."""
        try:
            return await parse_body(self.request, model, limit)
        except ApiError:
            await self.settle(await self.hub.store.check_node(self.credential.node_id, self.credential.secret_hash))
            raise

    async def settle(self, check: NodeCheck | NodeStatus) -> None:
        """Raise the 401 of an unknown or revoked credential (spending a token for the first);
        for the node's own, mark the request for its signed receipt."""
        status = check.status if isinstance(check, NodeCheck) else check
        if status == "revoked":
            raise RevokedCredential(401, "this node's credential was revoked; enroll it again with a new token")
        if status != "ok":
            await spend_failure(self.hub, self.hub.auth_failures, self.address)
            raise AuthError(401, "unknown node credential")
        sign_receipt_for(self.request, self.credential.node_id)


NodeWriteHandler = Callable[[Request, Hub, NodeWrite], Awaitable[Response]]


def node_write(handler: NodeWriteHandler) -> Endpoint:
    """A node endpoint whose one store call checks the credential and writes (a heartbeat):
    the handler gets the :class:`NodeWrite` and must :meth:`~NodeWrite.settle` the store's
    verdict before it answers. Everything else as :func:`endpoint` with the node role: the
    address's wrong-credential limit first, 401 without a node credential, 403 for the admin."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        hub = hub_of(request)
        address = client_address(request)
        hub.auth_failures.check(address)
        authorization = request.headers.get("authorization")
        try:
            found = hub.auth.parse(authorization)
        except AuthError:
            if authorization:
                await spend_failure(hub, hub.auth_failures, address)
            raise
        if isinstance(found, Principal):
            has_role(found, "node")
        assert isinstance(found, NodeCredential)
        return await handler(request, hub, NodeWrite(hub, request, found, address))

    return run
