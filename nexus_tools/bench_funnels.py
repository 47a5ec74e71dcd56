"""``nexus bench funnels``: funnel step events per second one edge ingests over real HTTP,
against a bare Starlette echo in the same run, and node-counters per second the hub's store
merges (G-counter max per node), per store.

The edge runs as its own ``nexus edge serve`` process with a cached funnel config (no hub
needed: events are local). wrk drives it with EVENTS_LUA, every request a valid event of a new
(visitor, step), so each one is a new row and a count. The echo gets the same script and
bodies (the same generator cost on both sides) in rounds interleaved as in ``nexus bench
edge``; the ratio pairs the two within a round. Afterwards the edge's store must hold exactly
the events wrk saw acknowledged, so the figure cannot count work the edge did not do, and a
run whose echo stays under the floor of :mod:`nexus_tools.bench_rule` is refused. The
merge figure calls the store directly, one report of REPORT_KEYS counters at a time (what one
edge report carries).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_worker.store import LocalStore
from hub.funnel_config import Experiment, Funnel, Status, Variant
from hub.funnel_schemas import config_document, config_etag
from hub.store import open_store
from hub.store.redis import RedisStore
from models.errors import NexusError
from models.progress import Progress
from nexus_tools.bench_edge import Load, echo_server, interleave, paired_ratio, parse_wrk, wrk_output
from nexus_tools.bench_rule import check_echo, require_wrk
from nexus_tools.processes import ServerProcess, edge_argv, free_port
from nexus_wire.assignment import ASSIGNED
from nexus_wire.datadir import EdgeDataDir

FUNNEL = Funnel("shop", ("view", "cart", "buy"))
EXPERIMENT = Experiment("bench", "shop", (Variant("A", 1.0), Variant("B", 1.0)), "buy", Status.RUNNING)
REPORT_KEYS = 100  # 10 experiments x 2 variants x 5 steps
#: seconds wrk runs on after the script stops sending, so the requests in flight get answered
DRAIN_S = 1

# wrk script; args: visitor-id prefix, seconds to send for, comma-separated steps.
# Event n of thread t is visitor "<prefix>-<t>-<n // #steps>" at step n % #steps, so every
# event is a new (visitor, step). Counts are kept per thread and summed in done(); throughput
# is acknowledged events over the time from the first request to the last answer.
EVENTS_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } nexus_timespec;
int clock_gettime(int clock, nexus_timespec *ts);
]]
local ts = ffi.new("nexus_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix, window, steps = args[1], tonumber(args[2]), {}
  for step in string.gmatch(args[3], "[^,]+") do table.insert(steps, step) end
  granted, sent, answered, acknowledged, first, last = 0, 0, 0, 0, 0, 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

-- wrk asks before every request: after the window nothing new is sent, so the requests in
-- flight are answered during the drain and none is cut off when wrk stops
function delay()
  local t = now()
  if first == 0 then first = t end
  if t - first >= window then return 3600000 end
  granted = granted + 1
  return 0
end

function request()
  -- wrk also calls request() once to check the script, with no delay() first: not sent
  local n = sent
  if granted > 0 then granted, sent = granted - 1, sent + 1 end
  local body = string.format('{"visitor_id":"%s-%d-%d","step":"%s"}',
                             prefix, id, math.floor(n / #steps), steps[n % #steps + 1])
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  answered, last = answered + 1, now()
  if status >= 200 and status < 300 then acknowledged = acknowledged + 1 end
end

function done(summary, latency, requests)
  local s, a, ok, t0, t1 = 0, 0, 0, math.huge, 0
  for _, thread in ipairs(threads) do
    s, a, ok = s + thread:get("sent"), a + thread:get("answered"), ok + thread:get("acknowledged")
    if thread:get("first") > 0 then t0 = math.min(t0, thread:get("first")) end
    t1 = math.max(t1, thread:get("last"))
  end
  io.write(string.format("nexus-events sent=%d answered=%d acknowledged=%d seconds=%.6f\n",
                         s, a, ok, math.max(t1 - t0, 0)))
end
"""
_TALLY = re.compile(r"^nexus-events sent=(\d+) answered=(\d+) acknowledged=(\d+) seconds=([\d.]+)$", re.M)


@dataclass(frozen=True)
class EventLoad(Load):
    """One wrk run of EVENTS_LUA. ``rps`` is acknowledged events per second; ``errors`` the
    events sent but not acknowledged (answered non-2xx, or never answered)."""

    sent: int
    acknowledged: int


def parse_events(output: str) -> EventLoad:
    # wrk's own error count is not used: it counts connections idle in the drain as timeouts
    tally = _TALLY.search(output)
    if tally is None:
        raise NexusError(f"wrk printed no event tally: {output.strip()[-300:]}")
    sent, answered, acknowledged = (int(g) for g in tally.groups()[:3])
    seconds = float(tally.group(4))
    load = parse_wrk(output)
    return EventLoad(
        acknowledged / seconds if seconds else 0.0,
        load.p50_ms,
        load.p99_ms,
        answered,
        sent - acknowledged,
        sent,
        acknowledged,
    )


class EventDriver:
    """wrk with EVENTS_LUA against one URL; fresh visitor ids every run, and running totals
    of the events sent and acknowledged (what the store check compares with)."""

    def __init__(self, url: str, connections: int, threads: int) -> None:
        self.url, self.connections, self.threads = url, connections, threads
        self.runs = self.sent = self.acknowledged = 0

    def __call__(self, seconds: float) -> EventLoad:
        window = max(1, round(seconds))
        args = (f"r{self.runs}", str(window), ",".join(FUNNEL.steps))
        self.runs += 1
        load = parse_events(wrk_output(self.url, EVENTS_LUA, window + DRAIN_S, self.connections, self.threads, args))
        self.sent += load.sent
        self.acknowledged += load.acknowledged
        return load


def _edge(root: Path, workers: int) -> tuple[ServerProcess, Path]:
    """An edge (not started) serving FUNNEL and EXPERIMENT from a cached config, and its data dir."""
    data = root / "edge-data"
    data.mkdir(parents=True)
    (root / "models").mkdir()
    document = config_document([FUNNEL], [EXPERIMENT])
    EdgeDataDir(data).funnel_config.write_text(json.dumps({"etag": config_etag(document), "document": document}))
    port = free_port()
    argv = edge_argv(port, models_dir=root / "models", data_dir=data, workers=workers)
    return ServerProcess("edge", argv, port, env={"NEXUS_MODELS": "funnel"}, ready_path="/v2/health/live"), data


def _stored(data_dir: Path) -> tuple[int, int]:
    """(event rows, step counts) in the edge's store, read after the edge stopped."""
    with contextlib.closing(sqlite3.connect(f"file:{EdgeDataDir(data_dir).store}?mode=ro", uri=True)) as db:
        rows = int(db.execute("SELECT COUNT(*) FROM funnel_event").fetchone()[0])
    store = LocalStore(data_dir)
    try:
        counted = sum(count for (_, _, step), count in store.funnel_counts().items() if step != ASSIGNED)
    finally:
        store.close()
    return rows, counted


def _check_store(driver: EventDriver, rows: int, counted: int) -> None:
    """Every acknowledged event is a row and a count; more rows only from requests still in
    flight when wrk stopped (sent, never answered, finished by the edge anyway)."""
    if not driver.acknowledged <= rows <= driver.sent or counted != rows:
        raise NexusError(
            f"edge store does not match the load: {driver.acknowledged} events acknowledged of {driver.sent} sent, "
            f"but {rows} rows and {counted} step counts stored"
        )


def _ingest(duration: float, rounds: int, connections: int, workers: int, progress: Progress) -> dict[str, Any]:
    threads = min(2, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-funnels-") as tmp:
        edge, data = _edge(Path(tmp), workers)
        with echo_server(workers) as echo, edge:
            drivers = {
                "echo": EventDriver(echo.url + "/echo", connections, threads),
                "edge": EventDriver(edge.url + "/v1/funnels/shop/events", connections, threads),
            }
            loads = interleave(drivers, rounds, duration / rounds, progress)
        rows, counted = _stored(data)  # the edge has stopped: everything it took is committed
    _check_store(drivers["edge"], rows, counted)
    edge_loads, echo_loads = loads["edge"], loads["echo"]
    check_echo("funnels", statistics.median(r.rps for r in echo_loads), workers)
    return {
        "valid": True,  # a run the generator could not saturate is refused above
        "generator": "wrk",
        "duration_s": duration,
        "rounds": rounds,
        "connections": connections,
        "workers": workers,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "events_per_s": _median([r.rps for r in edge_loads], 1),
        "p50_ms": _median([r.p50_ms for r in edge_loads], 3),
        "p99_ms": _median([r.p99_ms for r in edge_loads], 3),
        "errors": sum(r.errors for r in edge_loads),
        "echo_rps": _median([r.rps for r in echo_loads], 1),
        "echo_p50_ms": _median([r.p50_ms for r in echo_loads], 3),
        "echo_p99_ms": _median([r.p99_ms for r in echo_loads], 3),
        "echo_errors": sum(r.errors for r in echo_loads),
        "ratio": paired_ratio(edge_loads, echo_loads),
        "events_sent": drivers["edge"].sent,
        "events_acknowledged": drivers["edge"].acknowledged,
        "events_stored": rows,
        "events_counted": counted,
    }


def _median(values: list[float], digits: int) -> float:
    return round(statistics.median(values), digits)


def _reports(counters: int) -> list[tuple[str, dict[tuple[str, str, str], int]]]:
    """Rounds of reports from 50 nodes with growing counts (so every merge writes)."""
    keys = [(f"exp-{e}", v, s) for e in range(10) for v in ("A", "B") for s in (ASSIGNED, *FUNNEL.steps, "extra")][
        :REPORT_KEYS
    ]
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
    return {
        "node_counters": merged,
        "reports": len(reports),
        "node_counters_per_s": round(merged / elapsed, 1),
        "reports_per_s": round(len(reports) / elapsed, 1),
    }


def run_bench(
    duration: float,
    rounds: int,
    connections: int,
    workers: int,
    counters: int,
    redis_url: str | None,
    show_progress: bool,
) -> dict[str, Any]:
    require_wrk("funnels")  # it drives the edge's event ingest; there is no smoke generator
    rounds = max(1, min(rounds, int(duration)))
    progress = Progress("bench funnels", total=2 * rounds + (2 if redis_url else 1), enabled=show_progress)
    result: dict[str, Any] = {"edge_ingest": _ingest(duration, rounds, connections, workers, progress)}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-funnels-") as tmp:
        result["hub_merge"] = {"sqlite": _merge(f"sqlite:///{Path(tmp) / 'hub.sqlite3'}", counters)}
        progress.update()
        if redis_url:
            result["hub_merge"]["redis"] = _merge(f"{redis_url}?prefix=bench:{uuid.uuid4().hex[:8]}:", counters)
            progress.update()
    progress.close()
    return result


def register(bench_sub: argparse._SubParsersAction) -> None:
    bench = bench_sub.add_parser(
        "funnels", help="events/s one edge ingests over HTTP (wrk, vs a bare echo), and hub counter merges/s per store"
    )
    bench.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of event load on the edge, and as many on the echo (default 10)",
    )
    bench.add_argument("--rounds", type=int, default=5, help="interleaved edge/echo slices (default 5)")
    bench.add_argument("--connections", type=int, default=64, help="open connections of the load generator")
    bench.add_argument("--workers", type=int, default=1, help="uvicorn workers for the edge and the echo (default 1)")
    bench.add_argument("--counters", type=int, default=20000, help="node-counters merged per store")
    bench.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="Redis URL for the Redis run ('' to skip)")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    result = run_bench(
        duration=args.duration,
        rounds=args.rounds,
        connections=args.connections,
        workers=args.workers,
        counters=args.counters,
        redis_url=args.redis or None,
        show_progress=not args.json,
    )
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
