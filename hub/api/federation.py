"""The hub's signed Flower apps (``GET /v1/federation/apps``): what an edge's app guard may run.

A node fetches the list through its egress gateway and keeps it in its data dir; its guard
checks every statement against the hub key it pinned at enrollment (nexus_wire/apps.py).
Empty while federated rounds are off.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.auth import Principal
from hub.state import Hub, endpoint


@endpoint("node")
async def signed_apps(request: Request, hub: Hub, principal: Principal) -> Response:
    return JSONResponse(hub.rounds.apps.model_dump())


def routes() -> list[Route]:
    return [Route("/v1/federation/apps", signed_apps)]
