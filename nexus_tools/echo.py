"""The benchmark's baseline: a bare Starlette app that returns the request body."""

from __future__ import annotations

import argparse

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_worker.server import run_uvicorn


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


async def _ready(request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


def create_echo_app() -> Starlette:
    return Starlette(routes=[Route("/echo", _echo, methods=["POST"]), Route("/v2/health/ready", _ready)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare Starlette echo server (benchmark baseline)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run_uvicorn("nexus_tools.echo:create_echo_app", "127.0.0.1", args.port, args.workers, "warning")
