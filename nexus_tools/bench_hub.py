"""``nexus bench hub``: heartbeats/s a hub absorbs from N simulated nodes, and the time a
newly promoted version takes to reach M edges running the real sync agent, per store.

The hub runs as its own ``nexus hub serve`` process; the load generator (one asyncio
process) is the other side. The same generator first sends the same heartbeats to a bare
echo, its ceiling on this machine: a store whose heartbeat rate comes within
:data:`~nexus_tools.bench_rule.GENERATOR_SHARE` of it measured the generator, and the bench
refuses the run (:mod:`nexus_tools.bench_rule`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from edge_worker.hub_link import HubLink
from edge_worker.sync import Backoff, NodeStatus, SyncAgent
from hub.client import OperatorClient
from models.bundle import write_manifest
from models.errors import NexusError
from models.progress import Progress
from nexus_tools import bench_fleet
from nexus_tools.bench_edge import echo_server
from nexus_tools.bench_rule import check_headroom
from nexus_tools.processes import ServerProcess, free_port, nexus_argv
from nexus_wire.datadir import HubDataDir

HEARTBEAT = {"models": {"funnel": "1"}, "health": "ok", "request_rate": 12.5, "queue_depth": 0}
BUNDLE_BYTES = 2 << 20
EDGE_POLL_S = 1.0


class _HubProcess:
    def __init__(self, data_dir: Path, store: str) -> None:
        port = free_port()
        argv = nexus_argv("hub", "serve", "--data-dir", str(data_dir), "--store", store, "--port", str(port),
                          "--poll-interval", str(EDGE_POLL_S), "--no-superlink")  # fmt: skip
        self.process = ServerProcess(f"hub for the benchmark (store {store})", argv, port, ready_path="/healthz")
        self.process.start(timeout=60)
        self.url = self.process.url
        self.admin = OperatorClient(self.url, HubDataDir(data_dir).admin_token.read_text().strip())

    def stop(self) -> None:
        self.admin.close()
        self.process.stop(timeout=10)


class _Edge:
    """A simulated edge: the real sync agent, a repository that records when it switched."""

    def __init__(self, url: str, root: Path, token: str) -> None:
        self.served: dict[str, str] = {}
        self.switched_at: dict[str, float] = {}
        self.agent = SyncAgent(
            HubLink.open(url, root),
            root / "models",
            self._activate,
            self._status,
            enroll_token=token,
            backoff=Backoff(0.1, 1.0),
        )

    def _activate(self, model: str, version: str) -> None:
        self.served[model] = version
        self.switched_at[version] = time.monotonic()

    def _status(self) -> NodeStatus:
        return NodeStatus(models=dict(self.served))


def _bundle(root: Path, version: str) -> Path:
    folder = root / f"bundle-{version}"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(uuid.uuid4().bytes * (BUNDLE_BYTES // 16))
    write_manifest(folder, {"name": "funnel", "family": "funnel", "version": version})
    return folder


async def _enroll(url: str, tokens: list[str], at_once: int = 20) -> list[str]:
    # a bounded number at a time: a thousand at once wait on the client's pool past its timeout
    gate = asyncio.Semaphore(at_once)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(token: str) -> str:
            async with gate:
                reply = await client.post("/v1/enroll", json={"token": token})
            if reply.status_code != 201:
                raise NexusError(f"benchmark enrollment failed: {reply.status_code} {reply.text[:200]}")
            return f"Bearer node.{reply.json()['node_id']}.{reply.json()['node_secret']}"

        return list(await asyncio.gather(*(one(t) for t in tokens)))


async def _heartbeats(
    url: str, creds: list[str], seconds: float, connections: int = 50, path: str = "/v1/nodes/me/heartbeat"
) -> dict[str, float]:
    """Keep-alive connections, each cycling through its share of the nodes' credentials.

    A minimal HTTP/1.1 client on asyncio streams rather than httpx: httpx spends more CPU
    per request than the hub does, and would measure itself.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(HEARTBEAT).encode()
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def connection(share: list[str]) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        requests = [
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {cred}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for cred in share
        ]
        i = 0
        try:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                i += 1
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(connection(creds[i::connections]) for i in range(min(connections, len(creds)))))
    elapsed = time.monotonic() - start
    latencies.sort()
    return {
        "heartbeats_per_s": round(len(latencies) / elapsed, 1),
        "heartbeat_p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else float("nan"),
        "heartbeat_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else float("nan"),
        "heartbeat_errors": errors,
    }


async def _rollout(hub: _HubProcess, root: Path, edges: int) -> dict[str, float]:
    hub.admin.push(_bundle(root, "1"))
    hub.admin.promote("funnel", "1", "stable")
    sims = [
        _Edge(hub.url, root / f"edge-{i}", hub.admin.create_token({"region": str(i % 3)})["token"])
        for i in range(edges)
    ]
    tasks = [asyncio.create_task(e.agent.run()) for e in sims]
    try:
        await _until(lambda: all(e.served.get("funnel") == "1" for e in sims), 60)
        hub.admin.push(_bundle(root, "2"))
        t0 = time.monotonic()
        hub.admin.promote("funnel", "2", "stable")
        await _until(lambda: all(e.served.get("funnel") == "2" for e in sims), 120)
        reach = sorted(e.switched_at["2"] - t0 for e in sims)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for e in sims:
            await e.agent.link.aclose()
    return {"rollout_all_edges_s": round(reach[-1], 3), "rollout_median_edge_s": round(statistics.median(reach), 3)}


async def _until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise NexusError("benchmark rollout did not reach every edge in time")
        await asyncio.sleep(0.02)


def _bench_store(store: str, nodes: int, edges: int, seconds: float, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nexus-bench-hub-") as tmp:
        root = Path(tmp)
        hub = _HubProcess(root / "hub", store.replace("{tmp}", str(root)))
        try:
            tokens = [hub.admin.create_token({"region": str(i % 3)})["token"] for i in range(nodes)]
            creds = asyncio.run(_enroll(hub.url, tokens))
            progress.update(1, phase="enrolled")
            result = asyncio.run(_heartbeats(hub.url, creds, seconds))
            progress.update(1, phase="heartbeats")
            result.update(asyncio.run(_rollout(hub, root, edges)))
            progress.update(1, phase="rollout")
        finally:
            hub.stop()
    return result


def generator_ceiling(nodes: int, seconds: float) -> float:
    """Heartbeats/s the generator pushes through a bare echo: the most it could measure of a hub."""
    creds = [f"Bearer node.n-{i:016x}.{uuid.uuid4().hex}" for i in range(nodes)]  # the echo reads none
    with echo_server(1) as echo:
        load = asyncio.run(_heartbeats(echo.url, creds, seconds, path="/echo"))
    if load["heartbeat_errors"] or not load["heartbeats_per_s"]:
        raise NexusError(f"the bare echo did not answer the benchmark's heartbeats: {load}")
    return load["heartbeats_per_s"]


def run_bench(nodes: int, edges: int, seconds: float, redis_url: str | None, show_progress: bool) -> dict[str, Any]:
    stores = {"sqlite": "sqlite:///{tmp}/hub.sqlite3"}
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    if redis_url:
        stores["redis"] = f"{redis_url}?prefix={prefix}"
    progress = Progress("bench hub", 1 + 3 * len(stores), enabled=show_progress)
    results: dict[str, Any] = {
        "valid": True,  # a store the generator could not saturate is refused below
        "nodes": nodes,
        "edges": edges,
        "heartbeat_seconds": seconds,
        "bundle_bytes": BUNDLE_BYTES,
        "edge_poll_interval_s": EDGE_POLL_S,
        # the machine's load before the run: figures on a shared box are lower bounds
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "stores": {},
    }
    try:
        ceiling = results["generator_echo_heartbeats_per_s"] = generator_ceiling(nodes, seconds)
        progress.update(1, phase="generator ceiling")
        for name, url in stores.items():
            result = results["stores"][name] = _bench_store(url, nodes, edges, seconds, progress)
            check_headroom("hub", f"the {name} store's heartbeat rate", result["heartbeats_per_s"], ceiling)
    finally:
        progress.close()
        if redis_url:
            from hub.store.redis import RedisStore

            cleanup = RedisStore.from_url(f"{redis_url}?prefix={prefix}")
            cleanup.delete_all()
            cleanup.close()
    return results


def register(bench_sub: argparse._SubParsersAction) -> None:
    bench = bench_sub.add_parser("hub", help="heartbeats/s with 200 nodes and rollout time to 20 edges, per store")
    bench.add_argument("--nodes", type=int, default=200, help="simulated nodes sending heartbeats")
    bench.add_argument("--edges", type=int, default=20, help="sync agents a rollout is timed to")
    bench.add_argument("--seconds", type=float, default=5.0, help="heartbeat phase length per store")
    bench.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="Redis URL for the Redis run ('' to skip)")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench_fleet.add_fleet_args(bench)
    bench.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    if args.fleet:
        fleet = bench_fleet.run_from_args(args)
        print(json.dumps(fleet, indent=None if args.json else 2), flush=True)
        if not fleet["valid"]:  # the figures are printed, for what they show, but not a result
            raise NexusError("the fleet run is not valid: " + "; ".join(fleet["problems"]))
        return 0
    result = run_bench(
        nodes=args.nodes,
        edges=args.edges,
        seconds=args.seconds,
        redis_url=args.redis or None,
        show_progress=not args.json,
    )
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
