"""``nexus bench rounds``: seconds per federated round, ours against a bare Flower app, in one sitting.

Two edges and an 8 KB model each way:

- **bare Flower**: stock ``flower-superlink`` and two ``flower-supernode`` processes (Flower's
  own SuperExec, a ``flwr-clientapp`` process per message), the Message-API app in
  ``nexus_tools/bare_flower`` (numpy logistic regression, Flower's FedAvg and its
  ``send_and_receive``) submitted with ``flwr run``;
- **ours**: ``nexus hub serve`` (its SuperLink, app guard and Fleet gateway) and two
  ``nexus edge serve`` processes (SuperNode, app guard, warm ClientApp process) fed funnel
  outcomes, and a funnel run started through the hub's rounds API, as an operator would.

A round is train + evaluate on every node: from the push of its train messages to the
sight of its last evaluate reply. Where each message's time went comes from the ServerApps'
message traces (federated/polling_grid.py: pushed, replied, seen) and the SuperNodes' own
log lines (received, sent), stamped by Flower at ``FLWR_LOG_LEVEL=DEBUG``, which both sides run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from hub.client import FunnelClient
from models.bundle import DEFAULT_REPOSITORY, newest_bundle
from models.errors import NexusError
from nexus_service.processes import FlowerProcess, flower_env, free_port
from nexus_tools import demo
from nexus_tools.traffic import synthetic_sessions
from nexus_wire.datadir import EdgeDataDir

BARE_APP = Path(__file__).resolve().parent / "bare_flower"
STEPS = ("train", "evaluate")
PHASES = ("pickup", "launch_and_run", "reply", "seen")
#: what each phase covers, for the report
PHASE_HELP = {
    "pickup": "pushed by the ServerApp -> the SuperNode has pulled it (its idle sleep, the pull)",
    "launch_and_run": "-> the ClientApp's reply exists (SuperExec poll, app process start and import, the work)",
    "reply": "-> the SuperNode has pushed the reply (its 0.5 s reply poll, the push)",
    "seen": "-> the ServerApp has it (its pull interval)",
}
SESSIONS_PER_EDGE = 120


# -- the SuperNodes' log lines ------------------------------------------------------------------


def _stamp(line: str) -> float | None:
    """Flower's DEBUG console stamp (``INFO 2026-11-22 10:00:00,123: ...``, local time) as epoch seconds."""
    for start in range(min(len(line), 40)):
        chunk = line[start : start + 23]
        try:
            return datetime.strptime(chunk, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
    return None


def supernode_events(text: str) -> dict[str, dict[str, float]]:
    """message id -> {"received": t} for what a SuperNode pulled, reply id -> {"sent": t} for what it pushed."""
    events: dict[str, dict[str, float]] = {}
    pending: tuple[str, str] | None = None  # (event, message id) awaiting Flower's "... successfully" line
    for line in text.splitlines():
        for verb, event in (("Receiving: ", "received"), ("Sending: ", "sent")):
            if verb in line and "(ID: " in line:
                pending = (event, line.rsplit("(ID: ", 1)[1].split(")", 1)[0])
        if pending is not None and ("Received successfully" in line or "Sent successfully" in line):
            stamp = _stamp(line)
            if stamp is not None:
                events.setdefault(pending[1], {})[pending[0]] = stamp
            pending = None
    return events


def _rounds(messages: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(train messages, evaluate messages) of each round, in order: a step is the messages pushed
    together (Flower's strategies leave ``group_id`` empty), a round a train step and the evaluate after it."""
    steps: list[list[dict[str, Any]]] = []
    for m in messages:
        if m["message_type"] not in STEPS:
            continue
        if steps and (steps[-1][0]["message_type"], steps[-1][0]["pushed_at"]) == (m["message_type"], m["pushed_at"]):
            steps[-1].append(m)
        else:
            steps.append([m])
    return [
        (a, b)
        for a, b in zip(steps, steps[1:])
        if a[0]["message_type"] == "train" and b[0]["message_type"] == "evaluate"
    ]


def breakdown(trace: dict[str, Any], logs: list[str]) -> dict[str, Any]:
    """Per round and per phase (medians over messages) from a ServerApp's trace and the SuperNodes' logs."""
    events: dict[str, dict[str, float]] = {}
    for text in logs:
        events.update(supernode_events(text))
    per_round: list[dict[str, Any]] = []
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    for train, evaluate in _rounds(trace["messages"]):
        if any(m["seen_at"] is None for m in evaluate):
            continue
        seconds = max(m["seen_at"] for m in evaluate) - min(m["pushed_at"] for m in train)
        per_round.append({"round": len(per_round) + 1, "seconds": seconds})
        for m in train + evaluate:
            received = events.get(m["message_id"], {}).get("received")
            sent = events.get(m["reply_id"], {}).get("sent")
            if None in (received, sent, m["replied_at"], m["seen_at"]):
                continue
            stamps = [m["pushed_at"], received, m["replied_at"], sent, m["seen_at"]]
            for phase, a, b in zip(PHASES, stamps, stamps[1:]):
                phases[phase].append(b - a)
    seconds = [r["seconds"] for r in per_round]
    return {
        "rounds": per_round,
        "round_s_median": statistics.median(seconds) if seconds else None,
        "messages_timed": len(phases["seen"]),
        "phases_s_median": {p: statistics.median(v) if v else None for p, v in phases.items()},
    }


# -- bare Flower ----------------------------------------------------------------------------------


class _Stock(FlowerProcess):
    def __init__(self, root: Path, name: str, port: int, argv: list[str]) -> None:
        super().__init__(root, root / f"{name}.log", root / "flwr-home", "127.0.0.1", port)
        self.binary, self.argv = argv[0], argv

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / self.argv[0]), *self.argv[1:]]


def _flwr(home: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"],
        env=flower_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        return dict(json.loads(done.stdout[done.stdout.index("{") :]))
    except ValueError:
        raise NexusError(f"flwr {args[0]}: {(done.stderr or done.stdout).strip()[-300:]}") from None


def _wait(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise NexusError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(every)


def bare_flower(root: Path, rounds: int) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    link_port = free_port()
    link = _Stock(root, "superlink", link_port, [
        "flower-superlink", "--insecure", "--database", str(root / "state.db"), "--host", "127.0.0.1",
        "--port", str(link_port), "--disable-runtime-dependency-installation",
    ])  # fmt: skip
    node_argv = ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--host", "127.0.0.1"]
    ports = (free_port(), free_port())
    nodes = [_Stock(root, f"supernode-{i}", port, [*node_argv, "--port", str(port)]) for i, port in enumerate(ports)]
    home = root / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink.bench]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    with contextlib.ExitStack() as stack:
        for process in (link, *nodes):
            process.start()
            stack.callback(process.stop)

        def online() -> bool:
            listed = _flwr(home, "supernode", "ls", "bench").get("nodes", [])
            return sum(n.get("status") == "online" for n in listed) == len(nodes)

        _wait(online, 60, "two SuperNodes at the stock SuperLink")
        trace_file = root / "trace.json"
        config = f'num-rounds={rounds} trace-path="{trace_file}"'
        run_id = int(_flwr(home, "run", str(BARE_APP), "bench", "--run-config", config)["run-id"])
        started = time.monotonic()

        def finished() -> bool:
            return str(_flwr(home, "ls", "bench", "--run-id", str(run_id))["runs"][0]["status"]).startswith("finished")

        _wait(finished, 60 + 60 * rounds, f"bare Flower run {run_id}", every=1.0)
        wall = time.monotonic() - started
        logs = [n.log_path.read_text(errors="replace") for n in nodes]
        if not trace_file.exists():
            shown = subprocess.run(
                [str(Path(sys.executable).parent / "flwr"), "log", str(run_id), "bench", "--show"],
                env=flower_env(home), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            raise NexusError(f"the bare Flower run wrote no trace (see {root}): {shown.stdout.strip()[-1500:]}")
    return {"run_wall_s": round(wall, 2), **breakdown(json.loads(trace_file.read_text()), logs)}


# -- ours ---------------------------------------------------------------------------------------


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _feed(url: str, region: int, seed: int) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        for row in synthetic_sessions(SESSIONS_PER_EDGE, region, np.random.default_rng(seed + region)):
            body = {"session": row.session, "converted": row.converted}
            http.post("/v1/funnel/outcome", json=body).raise_for_status()


def ours(root: Path, rounds: int) -> dict[str, Any]:
    cluster = demo.Cluster(root)
    regions = (1, 2)
    try:
        admin: FunnelClient = cluster.start_hub()
        for model in ("emotion", "funnel"):  # an edge is ready once it serves both
            pushed = admin.push(newest_bundle(DEFAULT_REPOSITORY, model))
            admin.promote(model, pushed["version"], "stable")
        cluster.start_edges({r: admin.create_token({"region": str(r)})["token"] for r in regions})
        _wait(lambda: all(_ready(e.url) for e in cluster.edges), 120, "the edges to load the hub's model")
        for edge in cluster.edges:
            _feed(edge.url, edge.region, seed=0)
        _wait(lambda: cluster.online_supernodes() == len(regions), 120, "two SuperNodes at the hub", every=1.0)
        body = {"model": "funnel", "rounds": rounds, "min_nodes": len(regions), "timeout_s": 60, "deadline_s": 600}
        run = admin.start_run(body)
        started = time.monotonic()
        run = admin.wait_run(run["run_id"], poll_s=0.5, show_progress=False)
        wall = time.monotonic() - started
        if run["status"] != "finished":
            raise NexusError(f"our run {run['run_id']} ended {run['status']}: {run.get('reason')}")
        traces = sorted(root.glob("hub/**/*.trace.json"))
        if not traces:
            raise NexusError(f"our run left no message trace under {root / 'hub'}")
        logs = [EdgeDataDir(e.data_dir).supernode_log.read_text(errors="replace") for e in cluster.edges]
        report = breakdown(json.loads(traces[-1].read_text()), logs)
        report["hub_round_s"] = [r["duration_s"] for r in run["rounds"]]
        return {"run_wall_s": round(wall, 2), **report}
    finally:
        cluster.stop()


@contextlib.contextmanager
def _debug_stamps() -> Iterator[None]:
    """Flower stamps its log lines only at DEBUG; both sides' Flower processes inherit this."""
    saved = os.environ.get("FLWR_LOG_LEVEL")
    os.environ["FLWR_LOG_LEVEL"] = "DEBUG"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FLWR_LOG_LEVEL", None)
        else:
            os.environ["FLWR_LOG_LEVEL"] = saved


@dataclass(frozen=True)
class Options:
    rounds: int = 3
    keep: Path | None = None


def run_bench(options: Options) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        root = options.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexus-bench-rounds-")))
        with _debug_stamps():
            print("bare Flower: stock SuperLink, 2 SuperNodes, flwr run ...", file=sys.stderr, flush=True)
            bare = bare_flower(root / "bare", options.rounds)
            print("ours: nexus hub serve, 2 x nexus edge serve, a funnel run ...", file=sys.stderr, flush=True)
            mine = ours(root / "ours", options.rounds)
    ratio = None
    if bare["round_s_median"] and mine["round_s_median"] is not None:
        ratio = mine["round_s_median"] / bare["round_s_median"]
    return {
        "rounds": options.rounds,
        "nodes": 2,
        "bare_flower": bare,
        "ours": mine,
        "round_ratio": ratio,
        "phases": PHASE_HELP,
    }


def _print(result: dict[str, Any]) -> None:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:6.2f}"

    print(f"{'':16s}{'bare Flower':>12s}{'ours':>10s}   (seconds, medians; {result['rounds']} rounds, 2 nodes)")
    b, o = result["bare_flower"], result["ours"]
    print(f"{'round':16s}{fmt(b['round_s_median']):>12s}{fmt(o['round_s_median']):>10s}")
    for phase in PHASES:
        print(f"  {phase:14s}{fmt(b['phases_s_median'][phase]):>12s}{fmt(o['phases_s_median'][phase]):>10s}")
    ratio = result["round_ratio"]
    print(f"ours / bare Flower per round: {'-' if ratio is None else f'{ratio:.2f}'}")


def _run_cli(args: argparse.Namespace) -> int:
    result = run_bench(Options(rounds=args.rounds, keep=args.keep))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("rounds", help="seconds per federated round: ours against a bare Flower app")
    parser.add_argument(
        "--rounds", type=int, default=3, choices=range(1, 21), metavar="N", help="rounds per run, 1-20 (default 3)"
    )
    parser.add_argument(
        "--keep", type=Path, help="run in this folder and keep the logs and traces (default: a temporary folder)"
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.set_defaults(func=_run_cli)
