"""``nexus bench edge``: the edge against a bare Starlette echo under the same load.

Both run under uvicorn with the same options and worker count, one at a time, driven
by wrk (Debian's). Figures are relative to the echo measured in the same run, and a run
whose echo stays under the floor of :mod:`nexus_tools.bench_rule` is refused, as is one
without wrk: ``--generator httpx`` is a smoke run, its report ``"valid": false``, no ratio.

The edge runs under three settings side by side: as shipped (``edge``), without micro-batching
(``edge-nobatch``: ``batching_gain``) and without the heap settling of edge_worker/heap.py
(``edge-nogc``: ``gc_gain``, and the p99 it costs). Each serves the accurate emotion tier too when
the repository holds it (``emotion_accurate*``: ``/v1/emotion?model=emotion-accurate``, one text
per request, so its requests/s are texts/s); ``--no-accurate`` leaves it out.

The same run measures OIP v2 emotion inference over gRPC (``grpc_emotion``, the edge's
``--grpc-port``) against a bare gRPC echo in the echo server (``grpc_echo``), both driven by
the bounded ``grpc.aio`` generator of :mod:`nexus_tools.grpc_load`: ``grpc_ratio`` is to gRPC
what ``ratio`` is to HTTP, and ``grpc_vs_http_emotion`` compares the two transports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np

from edge_worker.settings import DEFAULT_MODELS
from models.bundle import DEFAULT_REPOSITORY, list_versions
from models.errors import NexusError
from models.progress import Progress
from nexus_tools.bench_rule import check_echo, require_wrk
from nexus_tools.echo import GRPC_PORT_ENV
from nexus_tools.examples import SESSION
from nexus_tools.grpc_load import emotion_request, run_grpc
from nexus_tools.processes import ServerProcess, edge_argv, free_port

EMOTION_TEXT = "I was so happy when the package arrived early, thank you!"
EMOTION_BODY = json.dumps({"text": EMOTION_TEXT})
FUNNEL_BODY = json.dumps({"session": SESSION})
#: issue 15's targets on 2 cores: the fast tier at >= 0.55x the echo with p99 <= 20 ms; the
#: accurate tier at >= 1,000 texts/s with micro-batching
TARGETS = {"ratio": 0.55, "emotion_p99_ms": 20.0, "batching_gain": 1.3, "emotion_accurate_rps": 1000.0}
ACCURATE = "emotion-accurate"
SMOKE_HINT = "or pass --generator httpx for a smoke run whose figures measure the generator"
HTTPX_INVALID = (
    "the httpx generator cannot load a server harder than it answers, so these figures measure the generator; "
    "no ratio is reported (a smoke run: use wrk, apt-get install wrk, for figures)"
)


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


# --- load generators ---------------------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _field(pattern: str, output: str, what: str) -> str:
    """The first group of ``pattern`` in wrk's report; a report without it is not a measurement."""
    found = re.search(pattern, output, re.M)
    if found is None:
        raise NexusError(f"wrk's output has no {what}: {output[-400:]!r}")
    return found.group(1)


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise NexusError(f"wrk reported a latency of {text!r}, which is not a duration")
    return float(found.group(1)) * _UNITS_MS[found.group(2)]


def parse_wrk(output: str) -> Load:
    rps = float(_field(r"Requests/sec:\s+([\d.]+)", output, "request rate"))
    requests = int(_field(r"(\d+) requests in", output, "request count"))
    p50 = _ms(_field(r"^\s+50%\s+(\S+)", output, "median latency"))
    p99 = _ms(_field(r"^\s+99%\s+(\S+)", output, "99th percentile latency"))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Load(rps, p50, p99, requests, errors)


def wrk_output(
    url: str, script: str, duration: float, connections: int, threads: int, script_args: Sequence[str] = ()
) -> str:
    """wrk's stdout for ``duration`` seconds (whole, at least 1) of load shaped by the Lua ``script``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        file.name,
        url,
    ]
    try:
        return subprocess.run(
            [*argv, "--", *script_args], capture_output=True, text=True, check=True, timeout=duration + 60
        ).stdout
    finally:
        os.unlink(file.name)


def run_wrk(url: str, body: str, duration: float, connections: int, threads: int) -> Load:
    script = f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    return parse_wrk(wrk_output(url, script, duration, connections, threads))


async def _httpx_load(url: str, body: str, duration: float, connections: int) -> Load:
    latencies: list[float] = []
    errors = 0
    content = body.encode()
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while (start := time.perf_counter()) < deadline:
                try:
                    response = await client.post(url, content=content, headers=headers)
                    ok = response.status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - begin
    ms = np.array(latencies) * 1e3
    return Load(
        len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(latencies), errors
    )


def run_httpx(url: str, body: str, duration: float, connections: int, threads: int) -> Load:
    return asyncio.run(_httpx_load(url, body, duration, connections))


# --- the benchmark -----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    server: str
    path: str
    body: str


TARGETS_DRIVEN = (
    Target("echo", "echo", "/echo", EMOTION_BODY),
    Target("emotion", "edge", "/v1/emotion", EMOTION_BODY),
    Target("emotion_nobatch", "edge-nobatch", "/v1/emotion", EMOTION_BODY),
    Target("emotion_nogc", "edge-nogc", "/v1/emotion", EMOTION_BODY),
    Target("funnel", "edge", "/v1/funnel/score", FUNNEL_BODY),
)
ACCURATE_TARGETS = (
    Target("emotion_accurate", "edge", f"/v1/emotion?model={ACCURATE}", EMOTION_BODY),
    Target("emotion_accurate_nobatch", "edge-nobatch", f"/v1/emotion?model={ACCURATE}", EMOTION_BODY),
)
#: the edge servers: name -> the settings (environment) each runs under beside its defaults
EDGES = {
    "edge": {},
    "edge-nobatch": {"NEXUS_BATCHING": "false"},
    "edge-nogc": {"NEXUS_GC_TUNING": "false"},
}


#: OIP v2 ModelInfer of the same emotion text over gRPC: target name -> the server whose gRPC port it drives
GRPC_TARGETS = {"grpc_echo": "echo", "grpc_emotion": "edge"}


def _median(values: list[float]) -> float:
    return float(np.median(values))


def paired_ratio(tops: Sequence[Load], bottoms: Sequence[Load]) -> float:
    """Median over rounds of top/bottom throughput measured in the same round."""
    return round(_median([a.rps / b.rps for a, b in zip(tops, bottoms) if b.rps]), 3)


def group_rss_mib(group: int | None) -> float | None:
    """Resident memory of every process in a server's process group (its supervisor and workers), in MiB."""
    if group is None or not Path("/proc").is_dir():
        return None
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:  # pgrp, after the command name's closing parenthesis
                total += int((stat.parent / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):  # a process that ended while we read
            continue
    return round(total / (1 << 20), 1)


def echo_server(workers: int, grpc_port: int | None = None) -> ServerProcess:
    """The bare Starlette echo (not started), under the uvicorn options every node uses; with
    ``grpc_port``, each worker also serves the gRPC echo there."""
    port = free_port()
    env = {GRPC_PORT_ENV: str(grpc_port)} if grpc_port is not None else None
    return ServerProcess(
        "echo",
        [sys.executable, "-m", "nexus_tools.echo", "--port", str(port), "--workers", str(workers)],
        port,
        env=env,
    )


L = TypeVar("L", bound=Load)


def interleave(
    drivers: Mapping[str, Callable[[float], L]], rounds: int, slice_s: float, progress: Progress
) -> dict[str, list[L]]:
    """A 1 s warm-up of every target (caches, allocators, connection set-up), then ``rounds``
    rounds in which each target gets ``slice_s`` seconds in turn: a burst of load from
    elsewhere on the machine hits every target of a round alike."""
    for drive in drivers.values():
        drive(1.0)
    loads: dict[str, list[L]] = {name: [] for name in drivers}
    for _ in range(rounds):
        for name, drive in drivers.items():
            load = drive(slice_s)
            loads[name].append(load)
            progress.update(1, **{name: f"{load.rps:.0f}"})
    return loads


def bench_edge(
    duration: float = 10.0,
    connections: int = 64,
    workers: int = 2,
    generator: str = "wrk",
    models_dir: Path | None = None,
    rounds: int = 5,
    show_progress: bool = True,
    accurate: bool = True,
) -> dict[str, object]:
    """Every target gets ``duration`` seconds of load, split into ``rounds`` interleaved
    slices; figures are medians over rounds and ratios are paired within a round, so a
    burst of load from elsewhere on the machine hits both sides of a ratio alike.

    ``accurate``: also serve and drive the accurate emotion tier, when the repository holds it."""
    if generator == "wrk":
        require_wrk("edge", SMOKE_HINT)
    elif generator != "httpx":
        raise NexusError(f"unknown load generator {generator!r}: wrk, or httpx for a smoke run")
    drive = run_wrk if generator == "wrk" else run_httpx
    threads = min(2, os.cpu_count() or 1)
    rounds = max(1, min(rounds, int(duration)))
    slice_s = duration / rounds
    repository = models_dir or DEFAULT_REPOSITORY
    accurate_note = None
    if accurate and not list_versions(repository, ACCURATE):
        accurate, accurate_note = False, f"not measured: no {ACCURATE} bundle in {repository}"
    elif not accurate:
        accurate_note = "not measured: --no-accurate"
    targets = TARGETS_DRIVEN + (ACCURATE_TARGETS if accurate else ())
    models = ",".join([*DEFAULT_MODELS, ACCURATE] if accurate else DEFAULT_MODELS)
    progress = Progress("bench edge", rounds * (len(targets) + len(GRPC_TARGETS)), enabled=show_progress)
    grpc_ports = {"echo": free_port(), "edge": free_port()}
    start_s: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp, contextlib.ExitStack() as stack:
        servers: dict[str, ServerProcess] = {"echo": stack.enter_context(echo_server(workers, grpc_ports["echo"]))}
        for name, env in EDGES.items():
            port = free_port()
            argv = edge_argv(port, models_dir=models_dir, data_dir=Path(tmp) / name, workers=workers)
            if name in grpc_ports:
                argv += ["--grpc-port", str(grpc_ports[name])]
            started = time.perf_counter()
            servers[name] = stack.enter_context(ServerProcess(name, argv, port, env={**env, "NEXUS_MODELS": models}))
            start_s[name] = time.perf_counter() - started

        def driver(target: Target) -> Callable[[float], Load]:
            return lambda seconds: drive(
                servers[target.server].url + target.path, target.body, seconds, connections, threads
            )

        def grpc_driver(server: str) -> Callable[[float], Load]:
            address, body = f"127.0.0.1:{grpc_ports[server]}", emotion_request(EMOTION_TEXT)
            return lambda seconds: Load(*run_grpc(address, body, seconds, connections, threads))

        drivers = {t.name: driver(t) for t in targets}
        drivers.update({name: grpc_driver(server) for name, server in GRPC_TARGETS.items()})
        loads = interleave(drivers, rounds, slice_s, progress)
        rss = {name: group_rss_mib(servers[name].pid) for name in EDGES}  # after the load: every model warm
    progress.close()
    valid = generator == "wrk"
    if valid:  # refuses a run whose generator could not saturate the echo
        check_echo("edge", _median([r.rps for r in loads["echo"]]), workers)

    def paired(top: str, bottom: str) -> float | None:
        return paired_ratio(loads[top], loads[bottom]) if valid else None  # no ratio of two generator figures

    report: dict[str, object] = {
        "valid": valid,
        "generator": generator,
        "duration_s": duration,
        "rounds": rounds,
        "connections": connections,
        "workers": workers,
        "cpus": os.cpu_count(),
        "models": models,
        "ratio": paired("emotion", "echo"),
        "batching_gain": paired("emotion", "emotion_nobatch"),
        "nogc_ratio": paired("emotion_nogc", "echo"),
        "gc_gain": paired("emotion", "emotion_nogc"),
        "accurate_ratio": paired("emotion_accurate", "echo") if accurate else None,
        "accurate_batching_gain": paired("emotion_accurate", "emotion_accurate_nobatch") if accurate else None,
        "accurate_note": accurate_note,
        "grpc_generator": f"grpc.aio: {threads} processes, {connections} calls in flight",
        "grpc_ratio": paired("grpc_emotion", "grpc_echo"),
        "grpc_vs_http_emotion": paired("grpc_emotion", "emotion"),
        "targets": TARGETS,
        "load_average": [round(x, 2) for x in os.getloadavg()],  # at the end: other work on the machine
        # what serving these models costs: seconds from spawn to ready, resident MiB of all its processes
        "edge_start_s": round(start_s["edge"], 2),
        "edge_rss_mib": rss["edge"],
    }
    for name, runs in loads.items():
        report[f"{name}_rps"] = round(_median([r.rps for r in runs]), 1)
        report[f"{name}_p50_ms"] = round(_median([r.p50_ms for r in runs]), 3)
        report[f"{name}_p99_ms"] = round(_median([r.p99_ms for r in runs]), 3)
        report[f"{name}_errors"] = sum(r.errors for r in runs)
    if not valid:
        report["invalid_reason"] = HTTPX_INVALID
    return report


def _run(args: argparse.Namespace) -> int:
    report = bench_edge(
        args.duration,
        args.connections,
        args.workers,
        args.generator,
        args.models,
        args.rounds,
        show_progress=not args.json,
        accurate=args.accurate,
    )
    print_report(report, args.json)
    return 0


def print_report(report: Mapping[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    if not report["valid"]:
        print(f"NOT A MEASUREMENT OF THE EDGE: {HTTPX_INVALID}")
    for key, value in report.items():
        print(f"{key:>24}: {value}")


def register(bench_sub: argparse._SubParsersAction) -> None:
    bench = bench_sub.add_parser("edge", help="edge node vs a bare Starlette echo (wrk or httpx load)")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    bench.add_argument("--connections", type=int, default=64, help="open connections of the load generator")
    bench.add_argument("--workers", type=int, default=2, help="uvicorn workers for both servers (default 2)")
    bench.add_argument(
        "--generator",
        choices=("wrk", "httpx"),
        default="wrk",
        help="load generator (default wrk; without it the bench refuses to run); httpx: a smoke run whose "
        "figures measure the generator, reported with valid false and no ratio",
    )
    bench.add_argument("--rounds", type=int, default=5, help="interleaved slices per measurement (default 5)")
    bench.add_argument("--models", type=Path, help="model repository (default: the shipped bundles)")
    bench.add_argument(
        "--no-accurate",
        dest="accurate",
        action="store_false",
        help=f"leave the accurate emotion tier ({ACCURATE}) out (default: measured when the repository holds it)",
    )
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(func=_run)
