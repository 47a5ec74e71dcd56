"""The benchmark's baseline: a bare Starlette app that returns the request body (and the gRPC echo beside it)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_worker.server import run_uvicorn
from nexus_tools import grpc_load


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


async def _ready(request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


#: when set, each worker also serves the gRPC echo on this port (nexus_tools.grpc_load)
GRPC_PORT_ENV = "NEXUS_ECHO_GRPC_PORT"


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    port = os.environ.get(GRPC_PORT_ENV)
    server = await grpc_load.start_echo(int(port)) if port else None
    try:
        yield
    finally:
        if server is not None:
            await server.stop(1.0)


def create_echo_app() -> Starlette:
    routes = [Route("/echo", _echo, methods=["POST"]), Route("/v2/health/ready", _ready)]
    return Starlette(routes=routes, lifespan=_lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare Starlette echo server (benchmark baseline)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run_uvicorn("nexus_tools.echo:create_echo_app", "127.0.0.1", args.port, args.workers, "warning")
