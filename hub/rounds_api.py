"""HTTP API of federated rounds (operator token); paths and JSON shapes in docs/federated.md."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import schemas
from hub.app import Hub, endpoint, offload, parse_body, store_call
from hub.auth import Principal
from hub.rounds import Rounds, RunConfig, run_view


def routes(hub: Hub, rounds: Rounds) -> list[Route]:
    @endpoint(hub, "admin")
    async def start(request: Request, principal: Principal) -> Response:
        body: schemas.StartRun = await parse_body(request, schemas.StartRun)
        config = RunConfig(**body.model_dump(exclude={"model"}))
        # submitting is a `flwr run` process: seconds, always off the event loop
        run = await offload(rounds.start, body.model, config)
        return JSONResponse(run_view(run), status_code=201)

    @endpoint(hub, "admin")
    async def list_runs(request: Request, principal: Principal) -> Response:
        return JSONResponse({"runs": await store_call(hub.store, rounds.list)})

    @endpoint(hub, "admin")
    async def show(request: Request, principal: Principal) -> Response:
        return JSONResponse(await store_call(hub.store, rounds.show, request.path_params["run_id"]))

    @endpoint(hub, "admin")
    async def stop(request: Request, principal: Principal) -> Response:
        return JSONResponse(run_view(await offload(rounds.stop, request.path_params["run_id"])))

    return [
        Route("/v1/rounds", list_runs),
        Route("/v1/rounds", start, methods=["POST"]),
        Route("/v1/rounds/{run_id}", show),
        Route("/v1/rounds/{run_id}/stop", stop, methods=["POST"]),
    ]


def build(hub: Hub) -> Rounds:
    return Rounds(hub.settings, hub.store, hub.registry, hub.clock)


async def start(rounds: Rounds) -> Callable[[], Awaitable[None]]:
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
