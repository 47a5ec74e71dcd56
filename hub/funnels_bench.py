"""``nexus bench funnels``: funnel events per second one edge ingests over real HTTP, and
node-counters per second the hub's store merges (G-counter max per node), per store.

The edge runs as its own ``nexus edge serve`` process with a cached funnel config (no hub
needed: events are local); the load generator is one asyncio process with httpx, so on a
small machine the figure is a lower bound. The merge figure calls the store directly,
one report of REPORT_KEYS counters at a time (what one edge report carries).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from edge_worker.server import ServerProcess, edge_argv, free_port
from hub.counters import ASSIGNED
from hub.funnel_config import Experiment, Funnel, Status, Variant
from hub.funnel_schemas import config_document, config_etag
from hub.store.base import open_store
from hub.store.redis import RedisStore
from models.progress import Progress

FUNNEL = Funnel("shop", ("view", "cart", "buy"))
EXPERIMENT = Experiment("bench", "shop", (Variant("A", 1.0), Variant("B", 1.0)), "buy", Status.RUNNING)
REPORT_KEYS = 100  # 10 experiments x 2 variants x 5 steps


def _edge(root: Path) -> ServerProcess:
    data = root / "edge-data"
    data.mkdir(parents=True)
    (root / "models").mkdir()
    document = config_document([FUNNEL], [EXPERIMENT])
    (data / "funnel-config.json").write_text(json.dumps({"etag": config_etag(document), "document": document}))
    port = free_port()
    argv = edge_argv(port, models_dir=root / "models", data_dir=data)
    return ServerProcess("edge", argv, port, env={"NEXUS_MODELS": "funnel"}, ready_path="/v2/health/live").start()


async def _events(url: str, events: int, concurrency: int, path: str = "/v1/funnels/shop/events") -> dict[str, float]:
    """``events`` step events from distinct visitors (each one is a new row and a count).

    With ``path="/v2/health/live"`` the same load measures the node's bare HTTP stack: the
    reference that says how much of the figure is the machine rather than the funnel code.
    """
    latencies: list[float] = []
    queue = iter(range(events))
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in queue:
            t0 = time.perf_counter()
            if path.endswith("/events"):
                response = await client.post(path, json={"visitor_id": f"bench-{i // 3}", "step": FUNNEL.steps[i % 3]})
            else:
                response = await client.get(path)
            latencies.append(time.perf_counter() - t0)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await client.post("/v1/funnels/shop/events", json={"visitor_id": "warm-up", "step": "view"})
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "events": events,
        "concurrency": concurrency,
        "errors": errors,
        "events_per_s": round(events / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
    }


def _reports(counters: int) -> list[tuple[str, dict[tuple[str, str, str], int]]]:
    """Rounds of reports from 50 nodes with growing counts (so every merge writes)."""
    keys = [(f"exp-{e}", v, s) for e in range(10) for v in ("A", "B") for s in (ASSIGNED, *FUNNEL.steps, "extra")][:REPORT_KEYS]
    reports = []
    for n in range(max(counters // REPORT_KEYS, 1)):
        node, round_ = f"n-{n % 50}", n // 50
        reports.append((node, {key: 10 * (round_ + 1) + j for j, key in enumerate(keys)}))
    return reports


def _merge(url: str, counters: int) -> dict[str, float]:
    store = open_store(url)
    reports = _reports(counters)
    try:
        start = time.perf_counter()
        for node, counts in reports:
            store.merge_counters(node, counts)
        elapsed = time.perf_counter() - start
        # sanity: the merged state holds every node's newest counts
        assert len(store.counter_state("exp-0")[("exp-0", "A", ASSIGNED)]) == min(len(reports), 50)
    finally:
        if isinstance(store, RedisStore):
            store.delete_all()
        store.close()
    merged = len(reports) * REPORT_KEYS
    return {"node_counters": merged, "reports": len(reports), "node_counters_per_s": round(merged / elapsed, 1), "reports_per_s": round(len(reports) / elapsed, 1)}


def run_bench(events: int, concurrency: int, counters: int, redis_url: str | None, show_progress: bool) -> dict[str, Any]:
    progress = Progress("bench funnels", total=3 if redis_url else 2, enabled=show_progress)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-funnels-") as tmp:
        root = Path(tmp)
        edge = _edge(root)
        try:
            result["edge_ingest"] = asyncio.run(_events(edge.url, events, concurrency))
            result["edge_reference_live"] = asyncio.run(_events(edge.url, events, concurrency, "/v2/health/live"))
        finally:
            edge.stop()
        progress.update()
        result["hub_merge"] = {"sqlite": _merge(f"sqlite:///{root / 'hub.sqlite3'}", counters)}
        progress.update()
        if redis_url:
            result["hub_merge"]["redis"] = _merge(f"{redis_url}?prefix=bench:{uuid.uuid4().hex[:8]}:", counters)
            progress.update()
    progress.close()
    return result
