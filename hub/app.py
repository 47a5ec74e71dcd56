"""The hub's Starlette app, assembled: the :class:`~hub.state.Hub`, the routes of every API
module (hub/api/) and the dashboard, the lifespan (Thompson updater, replica sync, rounds driver), the
receipt middleware and the shared error handlers (errors are JSON ``{"error": ...}``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from hub import replicas
from hub.api import federation, funnels, info, models, nodes, rounds, tokens
from hub.auth import NODE_PREFIX
from hub.blobs import BlobUnavailable
from hub.dashboard import routes as dashboard_routes
from hub.driver import RoundsDriver
from hub.registry import Conflict, NotFound
from hub.settings import HubSettings
from hub.state import build_hub
from hub.store.base import Store, StoreUnavailable
from models.bundle import BundleError
from models.errors import NexusError
from nexus_service.http import ReceiptMiddleware, exception_handlers
from nexus_service.metrics import Registry
from nexus_service.request_metrics import RequestMetrics, declare_requests, route_templates

log = logging.getLogger("nexus.hub")
#: what each hub error answers; any other NexusError is the caller's to fix (400)
STATUSES: dict[type[Exception], int] = {
    NexusError: 400,
    NotFound: 404,
    Conflict: 409,
    BundleError: 422,
    StoreUnavailable: 503,
    BlobUnavailable: 503,
}
_NODE_BEARER = f"Bearer {NODE_PREFIX}".encode()
METRICS_PREFIX = "nexus_hub"


def _from_a_node(scope: Any) -> bool:
    """Enrollment, or a request that claims a node credential: the ones worth hashing. Only
    those the endpoint then authenticates get a receipt (hub.state.endpoint)."""
    if scope["path"] == "/v1/enroll":
        return True
    return any(name == b"authorization" and value.startswith(_NODE_BEARER) for name, value in scope["headers"])


def create_app(settings: HubSettings, store: Store | None = None) -> Starlette:
    hub = build_hub(settings, store)
    routes: list[BaseRoute] = [
        *info.routes(),
        *nodes.routes(),
        *tokens.routes(),
        *models.routes(),
        *funnels.routes(),
        *rounds.routes(),
        *federation.routes(),
        *dashboard_routes.routes(hub),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop_thompson = funnels.start_thompson(hub)
        stop_sync = replicas.start_sync(hub)  # what another replica may have changed
        # the lease for driving rounds; its holder runs the SuperLink child and the run watcher
        stop_rounds = await RoundsDriver(hub).start()
        yield
        await stop_rounds()
        stop_sync()
        stop_thompson()
        await hub.store.aclose()  # its clients on this event loop
        hub.store.close()
        hub.registry.blobs.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers(log, STATUSES, "hub"))
    # inside the receipt middleware, which copies the scope (the router's endpoint would not
    # reach a layer outside it); the receipt is still signed within the timed send
    metrics = app.state.metrics = Registry()  # one process: the hub serves with one worker
    declare_requests(metrics, METRICS_PREFIX)
    app.add_middleware(RequestMetrics, metrics=metrics, prefix=METRICS_PREFIX, templates=route_templates(routes))
    # every authenticated node request is answered with a signed receipt binding the node, the
    # method, the path and the body the hub read (docs/privacy.md); operator requests get none
    app.add_middleware(ReceiptMiddleware, key=hub.registry.key, wants=_from_a_node)
    app.state.hub = hub
    return app
