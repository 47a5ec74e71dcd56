"""What the edge and the hub count of every HTTP request, and the ``/metrics`` answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus_service.metrics import LATENCY_BUCKETS, Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def declare_requests(registry: Registry, prefix: str) -> None:
    """``<prefix>_requests_total`` and ``<prefix>_request_duration_seconds``, for :class:`RequestMetrics`."""
    registry.declare(f"{prefix}_requests_total", "counter", "HTTP requests by route, method and status")
    latency = "HTTP request latency by route"
    registry.declare(f"{prefix}_request_duration_seconds", "histogram", latency, LATENCY_BUCKETS)


def route_templates(routes: Iterable[BaseRoute], prefix: str = "") -> dict[Any, str]:
    """Each endpoint's path template, keyed by what Starlette puts in ``scope["endpoint"]``, so a
    request is labelled ``/v1/nodes/{node_id}``, never with the ids it carried."""
    templates: dict[Any, str] = {}
    for route in routes:
        if isinstance(route, Route):
            templates.setdefault(route.endpoint, prefix + route.path)
        elif isinstance(route, Mount):
            if route.routes:
                templates.update(route_templates(route.routes, prefix + route.path))
            else:  # static files and the like: one series for the whole mount
                templates.setdefault(route.app, prefix + route.path + "/{path}")
    return templates


class RequestMetrics:
    """Counts and times every HTTP request by route template (pure ASGI: no per-request task);
    a request no route matched is ``unmatched``. ``templates``: :func:`route_templates`."""

    def __init__(self, app: ASGIApp, metrics: Registry, prefix: str, templates: dict[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates
        self.requests = f"{prefix}_requests_total"
        self.duration = f"{prefix}_request_duration_seconds"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router writes the matched endpoint into the shared scope.
            route = self.templates.get(scope.get("endpoint"), "unmatched")
            self.metrics.inc(self.requests, (("route", route), ("method", scope["method"]), ("status", str(status))))
            self.metrics.observe(self.duration, (("route", route),), time.perf_counter() - start)


async def metrics_response(registry: Registry) -> Response:
    # With --workers > 1 a scrape reads the other workers' files: off the event loop.
    text = await asyncio.to_thread(registry.render)
    return Response(text, media_type=CONTENT_TYPE)
