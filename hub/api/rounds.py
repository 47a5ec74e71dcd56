"""Federated rounds (operator token): start, list, show and stop runs on the hub's SuperLink;
paths and JSON shapes in docs/federated.md. The replica that drives rounds runs the watcher
and answers starts and stops; the others forward those to it (hub/driver.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import schemas
from hub.auth import Principal
from hub.driver import forward_to_driver
from hub.rounds import run_view
from hub.state import JSON_BODY_LIMIT, Hub, endpoint, store_call
from nexus_service.http import offload, read_body, validate_json
from nexus_wire.runconfig import RunConfig


@endpoint("admin")
async def start_run(request: Request, hub: Hub, principal: Principal) -> Response:
    raw = await read_body(request, JSON_BODY_LIMIT)
    body = validate_json(raw, schemas.StartRun)
    if (forwarded := await forward_to_driver(request, hub, raw)) is not None:
        return forwarded  # another replica drives rounds (hub/driver.py)
    # submitting is a `flwr run` process: seconds, always off the event loop
    run = await offload(hub.rounds.start, RunConfig(**body.model_dump()))
    return JSONResponse(run_view(run), status_code=201)


@endpoint("admin")
async def list_runs(request: Request, hub: Hub, principal: Principal) -> Response:
    return JSONResponse({"runs": await store_call(hub.store, hub.rounds.list)})


@endpoint("admin")
async def show_run(request: Request, hub: Hub, principal: Principal) -> Response:
    return JSONResponse(await store_call(hub.store, hub.rounds.show, request.path_params["run_id"]))


@endpoint("admin")
async def stop_run(request: Request, hub: Hub, principal: Principal) -> Response:
    if (forwarded := await forward_to_driver(request, hub)) is not None:
        return forwarded
    return JSONResponse(run_view(await offload(hub.rounds.stop, request.path_params["run_id"])))


def routes() -> list[Route]:
    return [
        Route("/v1/rounds", list_runs),
        Route("/v1/rounds", start_run, methods=["POST"]),
        Route("/v1/rounds/{run_id}", show_run),
        Route("/v1/rounds/{run_id}/stop", stop_run, methods=["POST"]),
    ]
