"""A bounded gRPC load generator for ``nexus bench edge``, and the bare gRPC echo it is compared with.

Neither Debian nor npm packages ``ghz`` (npm's ``ghz`` is an empty placeholder), so the load
comes from ``grpc.aio`` clients: ``processes`` child processes (one core each, as wrk's
threads), each with its own channels and ``in_flight`` concurrent unary calls for a fixed
duration. Requests are serialized once and sent as bytes, replies are not parsed: the
generator spends its time on the transport, like wrk. The baseline (:func:`echo_handler`) is a
bare ``grpc.aio`` server in the benchmark's Starlette echo (``nexus_tools.echo``, same uvicorn
workers, the port shared by SO_REUSEPORT like the edge's) answering ``ModelInfer`` with the
request's own bytes, so a figure over it is the edge's cost above gRPC itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import grpc
import numpy as np

from edge_worker.oip_grpc import SERVICE, ModelInferRequest
from edge_worker.oip_tensors import to_raw

METHOD = f"/{SERVICE}/ModelInfer"
#: channels per client process: HTTP/2 multiplexes the calls in flight over them
CHANNELS = 4


def emotion_request(text: str) -> bytes:
    """One text as ``tritonclient.grpc`` sends it: a BYTES tensor in ``raw_input_contents``."""
    request = ModelInferRequest(model_name="emotion")
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(to_raw("BYTES", np.array([text.encode()], dtype=np.object_)))
    return request.SerializeToString()


async def _drive(address: str, body: bytes, duration: float, in_flight: int) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    calls = [channel.unary_unary(METHOD) for channel in channels]  # no (de)serializers: bytes both ways
    latencies: list[float] = []
    errors = 0
    try:
        for call in calls:  # connected before the clock starts
            await call(body, timeout=30)
        deadline = time.perf_counter() + duration

        async def worker(call: Any) -> None:
            nonlocal errors
            while (start := time.perf_counter()) < deadline:
                try:
                    await call(body, timeout=30)
                except grpc.RpcError:
                    errors += 1
                latencies.append(time.perf_counter() - start)

        begin = time.perf_counter()
        await asyncio.gather(*(worker(calls[i % len(calls)]) for i in range(in_flight)))
        elapsed = time.perf_counter() - begin
    finally:
        for channel in channels:
            await channel.close()
    return {"elapsed": elapsed, "errors": errors, "latencies_ms": [round(s * 1e3, 3) for s in latencies]}


def run_grpc(
    address: str, body: bytes, duration: float, connections: int, processes: int
) -> tuple[float, float, float, int, int]:
    """(rps, p50 ms, p99 ms, requests, errors) of ``connections`` calls in flight over ``processes`` clients."""
    processes = max(1, min(processes, connections))
    argv = [sys.executable, "-m", "nexus_tools.grpc_load", address, str(duration), str(connections // processes)]
    children = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(processes)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(body, timeout=duration + 60)
        if child.returncode != 0:
            raise RuntimeError(f"gRPC load client failed: {err.decode(errors='replace')[-400:]}")
        reports.append(json.loads(out))
    latencies = np.concatenate([np.asarray(r["latencies_ms"], dtype=np.float64) for r in reports])
    rps = sum(len(r["latencies_ms"]) / r["elapsed"] for r in reports)
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if latencies.size else (0.0, 0.0)
    return rps, p50, p99, int(latencies.size), sum(r["errors"] for r in reports)


def echo_handler() -> grpc.GenericRpcHandler:
    """``ModelInfer`` answered with the request's bytes, unparsed (the gRPC twin of the HTTP echo)."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    return grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)})


async def start_echo(port: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((echo_handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one gRPC load client (the request's bytes on stdin)")
    parser.add_argument("address")
    parser.add_argument("duration", type=float)
    parser.add_argument("in_flight", type=int)
    args = parser.parse_args()
    report = asyncio.run(_drive(args.address, sys.stdin.buffer.read(), args.duration, max(1, args.in_flight)))
    print(json.dumps(report))
