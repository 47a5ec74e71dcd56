"""``/healthz``, ``/metrics`` and ``/v1/hub``: public, what a probe, Prometheus or an enrolling node reads first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.state import Hub, public, store_call
from nexus_service.request_metrics import metrics_response


@public
async def info(request: Request, hub: Hub) -> Response:
    return JSONResponse(
        {
            "public_key": hub.public_key,
            "key_id": hub.key_id,
            "poll_interval_s": hub.settings.poll_interval_s,
            "superlink": hub.settings.superlink_address(),
        }
    )


@public
async def healthz(request: Request, hub: Hub) -> Response:
    await store_call(hub.store, hub.store.ping)
    return JSONResponse({"status": "ok"})


@public
async def metrics(request: Request, hub: Hub) -> Response:
    """Request counts and latency by route template (no ids, no credentials): Prometheus text."""
    return await metrics_response(request.app.state.metrics)


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/v1/hub", info),
    ]
