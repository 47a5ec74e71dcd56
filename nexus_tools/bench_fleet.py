"""``nexus bench hub --fleet``: a simulated fleet against 1 and 2 hub replicas on one Redis.

Each simulated node does what an edge does, on an edge's schedule compressed (or stretched)
in time by one factor: a heartbeat every 30 s, an assignment poll every 10 s (``If-None-Match``:
a 304 until its assignment changes), a counter report every 5 s (absolute counts that grow),
each at a random phase. That is 1/3 request a second per node, so 10,000 nodes are 3,333
requests/s in real time; a run at ``rate`` requests/s is the fleet at ``rate / 3,333`` of real
time. The load is open-loop: every request has its scheduled time, and its latency counts
from then, so a hub that falls behind shows it in the latencies (no coordinated omission).

The generator is ``--processes`` asyncio processes, each with its share of the nodes and a few
keep-alive connections per replica on a minimal HTTP/1.1 client (httpx costs more CPU per
request than the hub). Nodes are spread over the replicas (node i talks to replica i mod n),
as a load balancer would. Before the first step every node polls its assignment once (not
measured), so that the steps see what a fleet running for a while sends: mostly 304s, each node
keeping its ETag from one phase to the next. Each step raises the offered rate until the hub no
longer keeps up (less than 97 % of the requests scheduled in the step answered in it, or a p99
over 1 s from the schedule); when even the lowest rate is too much, the rate is halved until a
step keeps up (not below the rate at which each node polls every :data:`MAX_POLL_S`). Then
the rollout phase, at the highest rate kept up, promotes a new version and runs until every
node's poll has returned it (or three poll intervals): a node learns of a version at its next
poll, so reaching all of them takes one poll interval of the fleet's time plus the hub's lag,
and a shorter window, or a hub that fell behind, would leave nodes out.

Honesty: the report keeps what was offered, sent and answered apart. A step whose rate comes
within :data:`~nexus_tools.bench_rule.GENERATOR_SHARE` of the generator's ceiling against a bare
echo, or whose producer ran behind its own schedule (p99 lag over :data:`GENERATOR_LAG_LIMIT_S`),
measured the generator; such a run, one where no step kept up, or a rollout that did not reach
every node, is ``"valid": false`` and the command exits 2 after printing it. CPU seconds of every
hub process and of the generator, and each replica's resident memory, are read from /proc, so the
figures say what one replica core served on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.auth import hash_secret
from hub.client import FunnelClient
from hub.store import open_store
from hub.store.base import NodeRecord
from hub.store.redis import RedisStore
from models.bundle import write_manifest
from models.errors import NexusError
from models.progress import Progress
from nexus_tools.bench_edge import echo_server
from nexus_tools.bench_rule import GENERATOR_SHARE
from nexus_tools.processes import ServerProcess, free_port, nexus_argv
from nexus_wire.datadir import HubDataDir

#: seconds between requests of one node, per kind (an edge's defaults)
PERIODS_S = {"heartbeat": 30.0, "assignments": 10.0, "counters": 5.0}
PER_NODE_RPS = sum(1 / p for p in PERIODS_S.values())
HEARTBEAT = json.dumps({"models": {"funnel": "1"}, "health": "ok", "request_rate": 3.0, "queue_depth": 0}).encode()
FUNNEL, EXPERIMENT = "bench", "bench-exp"
KEEP_UP = 0.97
P99_LIMIT_S = 1.0
#: the producer's p99 lateness behind its own schedule beyond which it, not the hub, set the pace
GENERATOR_LAG_LIMIT_S = 0.05
#: halvings of the lowest rate tried when even that one is more than the hub answers
HALVINGS = 4
#: the rollout phase ends at the latest after this many of the fleet's poll intervals
ROLLOUT_POLLS = 3.0
#: the longest poll interval (wall clock) a step may slow the fleet to: halving stops above the
#: rate that gives it, as the rollout at that rate lasts a poll interval or more
MAX_POLL_S = 120.0
CONNECTIONS_PER_REPLICA = 16  # per generator process


@dataclass
class Shard:
    """What one generator process drives."""

    hosts: list[tuple[str, int]]  # the replicas
    nodes: list[tuple[str, str, int]]  # node id, secret, replica index
    rate_factor: float  # the fleet's speed: 1.0 is real time
    start_at: float  # wall clock (set by the Generator once every shard's process is up)
    seconds: float
    seed: int
    echo: bool = False  # every request to POST /echo (the generator's ceiling)
    #: node id -> the ETag of its assignment from an earlier phase (a running fleet has one)
    etags: dict[str, str] = field(default_factory=dict)
    #: one assignment poll per node as fast as the hub answers, then stop (unmeasured warm-up)
    prime: bool = False
    #: stop producing once every node of this shard has seen the promoted version
    until_all_seen: bool = False


@dataclass
class ShardResult:
    sent: int = 0
    done: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # from the scheduled time
    service: list[float] = field(default_factory=list)  # from the send
    #: node id -> wall time its poll first returned the promoted version
    first_seen: dict[str, float] = field(default_factory=dict)
    #: node id -> its assignment's ETag at the end (the next phase starts with it)
    etags: dict[str, str] = field(default_factory=dict)
    #: how late the producer queued each request behind its scheduled time (its own lag)
    lag: list[float] = field(default_factory=list)
    #: connections that broke (refused, reset, a reply it could not read): their requests go unanswered
    broken_connections: int = 0
    cpu_s: float = 0.0


def _schedule(shard: Shard) -> list[tuple[float, int, str]]:
    """One cycle (the longest period) of (offset, node index, kind), in time order."""
    cycle = max(PERIODS_S.values()) / shard.rate_factor
    rng = random.Random(shard.seed)
    events = []
    for i in range(len(shard.nodes)):
        phase = rng.random()
        for kind, period in PERIODS_S.items():
            per_cycle = round(max(PERIODS_S.values()) / period)
            events += [(((phase + k / per_cycle) % 1.0) * cycle, i, kind) for k in range(per_cycle)]
    return sorted(events)


class _Driver:
    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.result = ShardResult()
        index = {node_id: i for i, (node_id, _, _) in enumerate(shard.nodes)}
        self.etags: dict[int, str] = {index[n]: e for n, e in shard.etags.items() if n in index}
        self.reports: dict[int, int] = {}
        self.queues = [asyncio.Queue[tuple[float, int, str]]() for _ in shard.hosts]
        self.stop_at = 0.0

    def request(self, node: int, kind: str) -> bytes:
        node_id, secret, replica = self.shard.nodes[node]
        host = self.shard.hosts[replica][0]
        auth = f"Authorization: Bearer node.{node_id}.{secret}\r\n"
        if kind == "assignments" and not self.shard.echo:
            etag = self.etags.get(node)
            extra = f"If-None-Match: {etag}\r\n" if etag else ""
            return f"GET /v1/nodes/me/assignments HTTP/1.1\r\nHost: {host}\r\n{auth}{extra}\r\n".encode()
        if kind == "counters":
            n = self.reports[node] = self.reports.get(node, 0) + 1
            rows = [
                {"experiment": EXPERIMENT, "variant": v, "step": s, "count": n * w}
                for v in ("A", "B")
                for s, w in (("view", 2), ("buy", 1))
            ]
            body = json.dumps({"node_id": node_id, "counts": rows}).encode()
            path = "/v1/nodes/me/counters"
        else:
            body, path = HEARTBEAT, "/v1/nodes/me/heartbeat"
        path = "/echo" if self.shard.echo else path
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def produce(self, t0: float) -> None:
        events = _schedule(self.shard)
        cycle = max(PERIODS_S.values()) / self.shard.rate_factor
        start = 0.0
        while True:
            for offset, node, kind in events:
                at = t0 + start + offset
                if at >= self.stop_at or self._all_seen():
                    return
                delay = at - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
                self.result.lag.append(max(0.0, time.monotonic() - at))
                self.queues[self.shard.nodes[node][2]].put_nowait((at, node, kind))
                self.result.sent += 1
            start += cycle

    def _all_seen(self) -> bool:
        return self.shard.until_all_seen and len(self.result.first_seen) == len(self.shard.nodes)

    async def prime(self) -> None:
        """Every node polls its assignment once; returns when all are answered."""
        now = time.monotonic()
        for node in range(len(self.shard.nodes)):
            self.queues[self.shard.nodes[node][2]].put_nowait((now, node, "assignments"))
        await asyncio.gather(*(q.join() for q in self.queues))

    async def connection(self, replica: int) -> None:
        host, port = self.shard.hosts[replica]
        queue = self.queues[replica]
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            self.result.broken_connections += 1
            return
        try:
            while True:
                at, node, kind = await queue.get()
                try:
                    if time.monotonic() < self.stop_at:  # else scheduled but not sent: counted by sent - done
                        await self._exchange(reader, writer, at, node, kind)
                finally:
                    queue.task_done()  # (prime() waits for the answers)
        except (OSError, EOFError, ValueError, IndexError):  # the other connections take its queue on
            self.result.broken_connections += 1
        finally:
            writer.close()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, at: float, node: int, kind: str
    ) -> None:
        sent = time.perf_counter()
        writer.write(self.request(node, kind))
        status, headers, body = await _read_response(reader)
        now = time.monotonic()
        self.result.done += 1
        self.result.statuses[status] = self.result.statuses.get(status, 0) + 1
        if status >= 400 and not self.shard.echo:
            self.result.errors += 1
        self.result.latencies.append(now - at)
        self.result.service.append(time.perf_counter() - sent)
        if kind == "assignments" and status == 200 and not self.shard.echo:
            self._assignment(node, headers, body)

    def _assignment(self, node: int, headers: dict[str, str], body: bytes) -> None:
        if "etag" in headers:
            self.etags[node] = headers["etag"]
        version = json.loads(body).get("models", {}).get("funnel", {}).get("version")
        node_id = self.shard.nodes[node][0]
        if version == "2" and node_id not in self.result.first_seen:
            self.result.first_seen[node_id] = time.time()

    async def run(self) -> ShardResult:
        t0 = time.monotonic() + (self.shard.start_at - time.time())
        self.stop_at = t0 + self.shard.seconds
        tasks = [
            asyncio.create_task(self.connection(r))
            for r in range(len(self.shard.hosts))
            for _ in range(CONNECTIONS_PER_REPLICA)
        ]
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        cpu = time.process_time()
        if self.shard.prime:
            await asyncio.wait_for(self.prime(), self.shard.seconds)
        else:
            await self.produce(t0)
            if self._all_seen():  # the rollout reached this shard's nodes: what is in flight, then stop
                self.stop_at = time.monotonic()
            await asyncio.sleep(max(0.0, self.stop_at - time.monotonic()) + 0.5)  # answers still in flight
        self.result.cpu_s = time.process_time() - cpu
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.result.etags = {self.shard.nodes[i][0]: e for i, e in self.etags.items()}
        return self.result


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def _shard_main(shard: Shard, ready: Any, start: Any, out: Any) -> None:
    ready.put(os.getpid())
    shard.start_at = start.get()
    out.put(asyncio.run(_Driver(shard).run()))


#: seconds from the last shard's process being up to the first scheduled request
START_IN_S = 1.0
#: the longest a shard's process may take to start (imports on a loaded machine)
SPAWN_TIMEOUT_S = 120.0


class Generator:
    """The shards' processes (spawned: no state of ours is inherited). They start sending
    together, :data:`START_IN_S` after the last one is up: a process that took long to start
    on a busy machine would otherwise begin behind its schedule, and that lag would show up as
    the hub's latency (or, past a short step's end, as requests never sent)."""

    def __init__(self, shards: list[Shard]) -> None:
        context = multiprocessing.get_context("spawn")
        self.seconds = max(s.seconds for s in shards)
        self.out, ready = context.Queue(), context.Queue()
        starts = [context.Queue() for _ in shards]
        self.procs = [
            context.Process(target=_shard_main, args=(s, ready, start, self.out), daemon=True)
            for s, start in zip(shards, starts, strict=True)
        ]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            ready.get(timeout=SPAWN_TIMEOUT_S)
        self.start_at = time.time() + START_IN_S
        for start in starts:
            start.put(self.start_at)

    def results(self) -> list[ShardResult]:
        results = [self.out.get(timeout=self.seconds + 120) for _ in self.procs]
        for proc in self.procs:
            proc.join(10)
        return results


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Fleet:
    """Hub replicas on one Redis prefix, with the fleet's nodes seeded into the store."""

    root: Path
    redis_url: str
    replicas: int
    nodes: int
    hubs: list[ServerProcess] = field(default_factory=list)
    creds: list[tuple[str, str]] = field(default_factory=list)
    #: node id -> its assignment's ETag, carried from phase to phase as a running edge keeps it
    etags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store_url = f"{self.redis_url}?prefix=fleet:{uuid.uuid4().hex[:8]}:"
        data_dir = self.root / f"hub-{self.replicas}"
        for i in range(self.replicas):  # the first makes the key and admin token the others share
            port = free_port()
            argv = nexus_argv("hub", "serve", "--data-dir", str(data_dir), "--store", self.store_url,
                              "--port", str(port), "--no-superlink", "--thompson-interval", "3600")  # fmt: skip
            self.hubs.append(ServerProcess(f"hub replica {i}", argv, port, ready_path="/healthz").start(timeout=60))
        self.rss_idle = [_rss_bytes(h.pid) for h in self.hubs if h.pid is not None]
        self.admin = FunnelClient(self.hubs[0].url, HubDataDir(data_dir).admin_token.read_text().strip())
        self.store = open_store(self.store_url)
        self.memory_before = self._used_memory()
        now = time.time()
        for i in range(self.nodes):
            node_id, secret = f"n-{uuid.uuid4().hex[:16]}", uuid.uuid4().hex + uuid.uuid4().hex
            self.store.add_node(NodeRecord(node_id, hash_secret(secret), {"region": str(i % 9 + 1)}, now))
            self.creds.append((node_id, secret))
        self.memory_enrolled = self._used_memory()
        self.admin.push(_bundle(self.root / f"bundles-{self.replicas}", "1"))
        self.admin.promote("funnel", "1", "stable")
        self.admin.create_funnel(FUNNEL, ["view", "buy"])
        self.admin.create_experiment(
            {"id": EXPERIMENT, "funnel_id": FUNNEL, "variants": [{"name": "A"}, {"name": "B"}], "decision_step": "buy"}
        )
        self.admin.start(EXPERIMENT)

    def _used_memory(self) -> int:
        assert isinstance(self.store, RedisStore)
        return int(self.store.r.info("memory")["used_memory"])

    def shards(self, processes: int, rate: float, seconds: float, **mode: bool) -> list[Shard]:
        hosts = [("127.0.0.1", h.port) for h in self.hubs]
        nodes = [(n, s, i % self.replicas) for i, (n, s) in enumerate(self.creds)]
        factor = rate / (self.nodes * PER_NODE_RPS)
        start = 0.0  # set by the Generator
        shards = []
        for p in range(processes):
            share = nodes[p::processes]
            etags = {n: self.etags[n] for n, _, _ in share if n in self.etags}
            shards.append(Shard(hosts, share, factor, start, seconds, seed=p, etags=etags, **mode))
        return shards

    def drive(self, shards: list[Shard]) -> list[ShardResult]:
        return self.collect(Generator(shards))

    def collect(self, generator: Generator) -> list[ShardResult]:
        results = generator.results()
        for r in results:
            self.etags.update(r.etags)
        return results

    def prime(self, processes: int) -> dict[str, Any]:
        """Every node's first assignment poll (a signed 200), before anything is measured."""
        started = time.monotonic()
        results = self.drive(self.shards(processes, 1.0, 600.0, prime=True))
        return {
            "polls": sum(r.done for r in results),
            "errors": sum(r.errors for r in results),
            "seconds": round(time.monotonic() - started, 1),
        }

    def hub_cpu_s(self) -> float:
        return sum(_cpu_s(h.pid) for h in self.hubs if h.pid is not None)

    def hub_rss(self) -> list[int]:
        return [_rss_bytes(h.pid) for h in self.hubs if h.pid is not None]

    def stop(self) -> None:
        self.admin.close()
        for hub in self.hubs:
            hub.stop(timeout=10)
        assert isinstance(self.store, RedisStore)
        self.store.delete_all()
        self.store.close()


def _bundle(root: Path, version: str) -> Path:
    folder = root / version
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(uuid.uuid4().bytes * 4096)  # the hub checks digests, never loads it
    write_manifest(folder, {"name": "funnel", "family": "funnel", "version": version})
    return folder


def _pct(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted ``values`` in milliseconds."""
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


def _summary(results: list[ShardResult], seconds: float, offered: float) -> dict[str, Any]:
    latencies = sorted(x for r in results for x in r.latencies)
    service = sorted(x for r in results for x in r.service)
    lag = sorted(x for r in results for x in r.lag)
    done, sent = sum(r.done for r in results), sum(r.sent for r in results)
    statuses: dict[str, int] = {}
    for r in results:
        for status, n in r.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + n
    achieved = done / seconds
    p99 = _pct(latencies, 0.99)
    lag_p99 = _pct(lag, 0.99)
    return {
        "offered_rps": round(offered, 1),
        # what the producer put on the wire's queues, and what the hub answered, in the step
        "sent_rps": round(sent / seconds, 1),
        "achieved_rps": round(achieved, 1),
        "unanswered": sent - done,
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": p99,
        "service_p50_ms": _pct(service, 0.50),
        "service_p99_ms": _pct(service, 0.99),
        "errors": sum(r.errors for r in results),
        "broken_connections": sum(r.broken_connections for r in results),
        "statuses": statuses,
        # against what the schedule put in this window (random phases make that differ from
        # offered x seconds in a short step), answered within it
        "kept_up": done >= KEEP_UP * sent and p99 is not None and p99 <= 1000 * P99_LIMIT_S,
        "generator_cpu_s": round(sum(r.cpu_s for r in results), 2),
        "generator_lag_p99_ms": lag_p99,
        "generator_behind": lag_p99 is None or lag_p99 > 1000 * GENERATOR_LAG_LIMIT_S,
    }


def _ceiling(nodes: int, processes: int, rate: float, seconds: float) -> float:
    """Requests/s the generator gets answered by a bare echo at ``rate`` offered."""
    with echo_server(1) as echo:
        assert echo.port is not None
        creds = [(f"n-{i:016x}", "x", 0) for i in range(nodes)]
        factor = rate / (nodes * PER_NODE_RPS)
        shards = [
            Shard([("127.0.0.1", echo.port)], creds[p::processes], factor, 0.0, seconds, p, echo=True)
            for p in range(processes)
        ]
        results = Generator(shards).results()
    return sum(r.done for r in results) / seconds


def _step(fleet: Fleet, processes: int, rate: float, seconds: float, ceiling: float) -> dict[str, Any]:
    cpu0 = fleet.hub_cpu_s()
    results = fleet.drive(fleet.shards(processes, rate, seconds))
    step = _summary(results, seconds, rate)
    hub_cpu = fleet.hub_cpu_s() - cpu0
    step["hub_cpu_s"] = round(hub_cpu, 2)
    step["requests_per_hub_cpu_s"] = round(step["achieved_rps"] * seconds / hub_cpu, 1) if hub_cpu else None
    step["generator_bound"] = step["achieved_rps"] >= GENERATOR_SHARE * ceiling or step["generator_behind"]
    return step


def bench_replicas(
    fleet: Fleet, processes: int, rates: list[float], seconds: float, ceiling: float, progress: Progress
) -> dict[str, Any]:
    out: dict[str, Any] = {"prime": fleet.prime(processes)}
    steps = []
    for rate in rates:
        steps.append(_step(fleet, processes, rate, seconds, ceiling))
        progress.update(1, phase=f"{fleet.replicas} replica(s) at {rate:.0f}/s")
        if not steps[-1]["kept_up"]:
            break
    rate = rates[0]
    floor = PERIODS_S["assignments"] * fleet.nodes * PER_NODE_RPS / MAX_POLL_S
    for _ in range(HALVINGS if not any(s["kept_up"] for s in steps) else 0):
        if rate / 2 < floor:
            break
        rate /= 2  # even the lowest rate was too much: find one this machine's hub keeps up with
        steps.append(_step(fleet, processes, rate, seconds, ceiling))
        progress.update(0, phase=f"{fleet.replicas} replica(s) at {rate:.0f}/s")
        if steps[-1]["kept_up"]:
            break
    kept = [s for s in steps if s["kept_up"]]
    best = max(kept, key=lambda s: s["achieved_rps"]) if kept else min(steps, key=lambda s: s["offered_rps"])
    out["steps"] = steps
    out["sustained_rps"] = best["achieved_rps"] if kept else None
    best_cpu = best["requests_per_hub_cpu_s"]
    # the fleet one replica holds on the real-time schedule: with the cores it had here, and per core of its own
    out["nodes_per_replica"] = round(best["achieved_rps"] / PER_NODE_RPS / fleet.replicas) if kept else None
    out["nodes_per_replica_core"] = round(best_cpu / PER_NODE_RPS) if best_cpu else None
    out["rollout"] = _rollout(fleet, processes, best["offered_rps"])
    progress.update(1, phase=f"{fleet.replicas} replica(s) rollout")
    per_1000 = 1000 / fleet.nodes
    out["redis_bytes_per_1000_nodes"] = {
        "enrolled": round((fleet.memory_enrolled - fleet.memory_before) * per_1000),
        # with a heartbeat and four funnel counters per node
        "after_traffic": round((fleet._used_memory() - fleet.memory_before) * per_1000),
    }
    out["replica_rss_mb"] = {
        "idle": [round(b / 2**20, 1) for b in fleet.rss_idle],
        "after_traffic": [round(b / 2**20, 1) for b in fleet.hub_rss()],
    }
    return out


def _rollout(fleet: Fleet, processes: int, rate: float) -> dict[str, Any]:
    """Promote version 2 two seconds in; run until every node's poll returned it."""
    factor = rate / (fleet.nodes * PER_NODE_RPS)
    poll_s = PERIODS_S["assignments"] / factor
    fleet.admin.push(_bundle(fleet.root / f"bundles-{fleet.replicas}", "2"))
    shards = fleet.shards(processes, rate, 2.0 + ROLLOUT_POLLS * poll_s, until_all_seen=True)
    generator = Generator(shards)
    time.sleep(max(0.0, generator.start_at + 2.0 - time.time()))
    promoted = time.time()
    fleet.admin.promote("funnel", "2", "stable")
    results = fleet.collect(generator)
    seen = sorted(t - promoted for r in results for t in r.first_seen.values())
    everyone = len(seen) == fleet.nodes

    def fleet_time(ms: float | None) -> float | None:  # a real-time fleet polling every 10 s would see this
        return None if ms is None else round(ms / 1000 * factor, 2)

    wall = {
        "p50_s": _s(_pct(seen, 0.50)),
        "p99_s": _s(_pct(seen, 0.99)),
        "all_s": round(seen[-1], 2) if everyone else None,
    }
    return {
        "offered_rps": round(rate, 1),
        "fleet_speed": round(factor, 4),  # 1.0: real time
        "poll_interval_s": round(poll_s, 2),
        "nodes_reached": len(seen),
        "errors": sum(r.errors for r in results),
        "wall": wall,
        "fleet_time": {
            "p50_s": fleet_time(_pct(seen, 0.50)),
            "p99_s": fleet_time(_pct(seen, 0.99)),
            "all_s": fleet_time(1000 * seen[-1]) if everyone else None,
        },
    }


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 2)


def run_fleet(
    nodes: int, replicas: list[int], rates: list[float], seconds: float, processes: int, redis_url: str, show: bool
) -> dict[str, Any]:
    progress = Progress("bench hub --fleet", 1 + len(replicas) * (len(rates) + 1), enabled=show)
    result: dict[str, Any] = {
        "nodes": nodes,
        "periods_s": PERIODS_S,
        "real_time_rps": round(nodes * PER_NODE_RPS, 1),
        "step_seconds": seconds,
        "generator_processes": processes,
        "connections_per_replica_per_process": CONNECTIONS_PER_REPLICA,
        # the machine's load before the run: figures on a shared box are lower bounds
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "replicas": {},
    }
    try:
        # offered far beyond any step: the echo answers what the generator can push, its ceiling
        ceiling = result["generator_echo_rps"] = round(_ceiling(nodes, processes, 10 * max(rates), seconds), 1)
        progress.update(1, phase="generator ceiling")
        with tempfile.TemporaryDirectory(prefix="nexus-bench-fleet-") as tmp:
            for n in replicas:
                fleet = Fleet(Path(tmp), redis_url, n, nodes)
                try:
                    result["replicas"][str(n)] = bench_replicas(fleet, processes, rates, seconds, ceiling, progress)
                finally:
                    fleet.stop()
    finally:
        progress.close()
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    result["problems"] = problems(result)
    result["valid"] = not result["problems"]
    return result


def problems(result: dict[str, Any]) -> list[str]:
    """Why the run's figures cannot be reported (empty: they can)."""
    found = []
    for n, run in result["replicas"].items():
        if run["sustained_rps"] is None:
            found.append(f"{n} replica(s): no step kept up, down to {run['steps'][-1]['offered_rps']}/s offered")
        for step in run["steps"]:
            if step["kept_up"] and step["generator_bound"]:
                found.append(
                    f"{n} replica(s) at {step['offered_rps']}/s: the load generator set the pace "
                    f"(lag p99 {step['generator_lag_p99_ms']} ms, echo ceiling {result['generator_echo_rps']}/s)"
                )
        rollout = run["rollout"]
        if rollout["wall"]["all_s"] is None:
            found.append(
                f"{n} replica(s): the new version reached {rollout['nodes_reached']} of {result['nodes']} nodes"
            )
    return found


def add_fleet_args(bench: argparse.ArgumentParser) -> None:
    """``nexus bench hub`` flags of the fleet mode (``--nodes``, ``--seconds`` and ``--redis`` are shared)."""
    bench.add_argument(
        "--fleet",
        action="store_true",
        help="simulate a fleet of --nodes edges (heartbeat 30 s, assignment poll 10 s, counters 5 s) "
        "against 1 and 2 replicas on Redis instead; --seconds is each load step's length; exits 2 after "
        "the report when the load generator set the pace, no step kept up or a rollout missed a node",
    )
    bench.add_argument("--replicas", default="1,2", help="replica counts the fleet is run against (default 1,2)")
    bench.add_argument(
        "--rates", default="500,1000,2000,4000", help="offered requests/s of the load steps, lowest first"
    )
    bench.add_argument("--processes", type=int, default=2, help="load-generator processes (default 2)")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if not args.redis:
        raise NexusError("--fleet runs on Redis: give --redis URL")
    try:
        replicas = [int(n) for n in args.replicas.split(",")]
        rates = sorted(float(r) for r in args.rates.split(","))
    except ValueError:
        raise NexusError("--replicas and --rates are comma-separated numbers") from None
    if not 1 <= args.nodes <= 1_000_000 or not replicas or min(replicas) < 1 or not rates or rates[0] <= 0:
        raise NexusError("--nodes must be in 1..1000000, --replicas and --rates positive")
    if not 0 < args.seconds <= 3600:
        raise NexusError("--seconds must be in (0, 3600]")
    return run_fleet(args.nodes, replicas, rates, args.seconds, max(1, args.processes), args.redis, not args.json)
