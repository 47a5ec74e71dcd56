"""``/healthz`` and ``/v1/hub``: public, what a probe or an enrolling node reads first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.state import Hub, public, store_call


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


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz),
        Route("/v1/hub", info),
    ]
