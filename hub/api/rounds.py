"""Federated rounds (operator token): start, list, show and stop runs on the hub's SuperLink,
and the watcher the app's lifespan runs; paths and JSON shapes in docs/federated.md."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import schemas
from hub.auth import Principal
from hub.rounds import Rounds, run_view
from hub.state import JSON_BODY_LIMIT, Hub, endpoint, store_call
from nexus_service.http import offload, parse_body
from nexus_wire.runconfig import RunConfig


@endpoint("admin")
async def start_run(request: Request, hub: Hub, principal: Principal) -> Response:
    body = await parse_body(request, schemas.StartRun, JSON_BODY_LIMIT)
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
    return JSONResponse(run_view(await offload(hub.rounds.stop, request.path_params["run_id"])))


def routes() -> list[Route]:
    return [
        Route("/v1/rounds", list_runs),
        Route("/v1/rounds", start_run, methods=["POST"]),
        Route("/v1/rounds/{run_id}", show_run),
        Route("/v1/rounds/{run_id}/stop", stop_run, methods=["POST"]),
    ]


async def start_watcher(rounds: Rounds) -> Callable[[], Awaitable[None]]:
    """Start the managed SuperLink and the watcher; returns the coroutine that stops both."""
    await offload(rounds.open)
    task = asyncio.create_task(_watch(rounds), name="nexus-rounds-watch") if rounds.link is not None else None

    async def stop() -> None:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await offload(rounds.close)

    return stop


async def _watch(rounds: Rounds) -> None:
    while True:
        await offload(rounds.tick)
        await asyncio.sleep(rounds.settings.rounds_watch_interval_s)
