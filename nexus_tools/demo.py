"""``nexus demo``: the whole system on loopback, driven by realistic traffic, with a summary
of what really happened.

A hub (SQLite store, its Flower SuperLink) and three edges (regions 1..3, each with its
SuperNode) run as child processes on free 127.0.0.1 ports. The edges get the shipped
models from the hub, answer an app's traffic (nexus_tools/traffic.py), keep funnel
outcomes and feedback as local training data, and assign visitors to an experiment with a
known truth (B converts better). Two federated rounds train the funnel model on the edges'
data; the result is promoted only through the hub's promotion gate (``auto_promote``: better
than the stable version on the same nodes' evaluation data), and the demo then waits until
every edge serves it; a candidate the gate holds back is reported with why. Every node
stops on exit, on error and on Ctrl-C (edges first, so their SuperNodes sign off, then the
hub, which stops its SuperLink).

``--standalone`` is the first demo: one edge without a hub, showing calls and answers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np

from edge_worker.audit import SEND, AuditReader, verify
from hub.client import FunnelClient
from hub.superlink import SuperLink, SuperLinkConfig
from models.bundle import DEFAULT_REPOSITORY, list_versions, newest_bundle, read_manifest
from models.errors import NexusError
from nexus_service.processes import descendants, reap
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerProcess, edge_argv, free_port, nexus_argv
from nexus_tools.traffic import (
    Example,
    Outcome,
    Recorder,
    Tally,
    Truth,
    grammar_texts,
    replay_sessions,
    replay_texts,
    synthetic_sessions,
    walk_visitors,
)
from nexus_wire.datadir import EdgeDataDir, HubDataDir
from nexus_wire.payloads import RECEIPT_ACK

REGIONS = (1, 2, 3)
FUNNEL = "shop"
EXPERIMENT = "checkout-test"
#: the experiment's truth: A reaches the cart 30% and buys 10%, B 35% and 14%
TRUTH = Truth(("view", "cart", "buy"), {"A": (0.30, 0.10 / 0.30), "B": (0.35, 0.14 / 0.35)})
HUB_POLL_S = 0.5  # edges' model poll: a promoted version arrives within seconds
FUNNEL_SYNC_S = 1.0  # edges' counter reports


@dataclass(frozen=True)
class Options:
    data_dir: Path | None = None
    data: Path | None = None
    models: Path = DEFAULT_REPOSITORY
    sessions: int = 200  # per edge: scored, then stored as outcomes (local training data)
    texts: int = 40  # per edge: classified, then stored as feedback
    visitors: int = 1500  # through the experiment, spread over the edges
    allocation: str = "fixed"
    keep: bool = False
    seed: int = 2026


class Stages:
    """Stage lines with the elapsed time on stderr (stdout stays for the summary)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", file=self.out, flush=True)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise NexusError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def start_jobs(jobs: list[Callable[[threading.Event], Any]], stop: threading.Event) -> list[Future[Any]]:
    """Run each job in a thread of its own; they check ``stop`` between requests."""
    pool = ThreadPoolExecutor(len(jobs))
    futures = [pool.submit(job, stop) for job in jobs]
    pool.shutdown(wait=False)
    return futures


def gather(futures: list[Future[Any]], stop: threading.Event) -> list[Any]:
    """The jobs' results; on a failure or Ctrl-C (raised here, in the main thread) the others stop."""
    try:
        return [f.result() for f in futures]
    except BaseException:
        stop.set()
        raise


# -- the nodes ----------------------------------------------------------------------------------


@dataclass
class Edge:
    region: int
    process: ServerProcess
    data_dir: Path

    @property
    def url(self) -> str:
        return self.process.url


class Cluster:
    """The hub and the edges as child processes; :meth:`stop` ends them in order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub_dir = root / "hub"
        self.superlink_port = free_port()
        port = free_port()
        argv = nexus_argv("hub", "serve", "--data-dir", str(self.hub_dir), "--port", str(port),
                          "--poll-interval", str(HUB_POLL_S), "--superlink-port", str(self.superlink_port))  # fmt: skip
        self.hub = ServerProcess("hub", argv, port, ready_path="/healthz")
        self.edges: list[Edge] = []
        self._starting: list[Future[ServerProcess]] = []

    def start_hub(self) -> FunnelClient:
        self.hub.start(timeout=60)
        return FunnelClient(self.hub.url, HubDataDir(self.hub_dir).admin_token.read_text().strip())

    def start_edges(self, tokens: dict[int, str]) -> None:
        """Start every edge at once (each enrolls, then its SuperNode joins); wait until they are live."""
        for region, token in tokens.items():
            root = self.root / f"edge-{region}"
            (root / "models").mkdir(parents=True, exist_ok=True)  # empty: the hub sends the models
            port = free_port()
            argv = edge_argv(port, models_dir=root / "models", data_dir=root / "data")
            # the edge learns the SuperLink from the hub, as an operator's would
            argv += ["--hub", self.hub.url, "--enroll-token", token, "--superlink", "auto"]
            env = {"NEXUS_FUNNEL_SYNC_S": str(FUNNEL_SYNC_S)}
            self.edges.append(
                Edge(
                    region,
                    ServerProcess(f"edge {region}", argv, port, env=env, ready_path="/v2/health/live"),
                    root / "data",
                )
            )
        pool = ThreadPoolExecutor(len(self.edges))
        self._starting = [pool.submit(e.process.start, 60.0) for e in self.edges]
        pool.shutdown(wait=False)
        for future in self._starting:
            future.result()

    def online_supernodes(self) -> int:
        return len(SuperLink(SuperLinkConfig(self.hub_dir / "flower", port=self.superlink_port)).online_nodes())

    def stop(self) -> None:
        # A second Ctrl-C must not cut the shutdown short and leave children behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            wait_all(self._starting)  # a start still under way would spawn its process after we stopped it
            # Snapshot first: once a parent is stopped its orphans are no longer below us.
            tree = descendants(os.getpid())
            with ThreadPoolExecutor(max(len(self.edges), 1)) as pool:
                list(pool.map(lambda e: e.process.stop(), self.edges))  # each signs its SuperNode off
            self.hub.stop(timeout=20)  # SIGTERM: the hub stops its SuperLink
            reap(tree, grace=5.0)
        finally:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does: through the cleanup that stops the children."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Workload:
    outcomes: list[list[Outcome]]  # per edge
    texts: list[list[Example]]  # per edge
    source: str


def _workload(options: Options, emotion_labels: list[str]) -> Workload:
    rng = np.random.default_rng(options.seed)
    if options.data is not None:
        outcomes = replay_sessions(options.data, len(REGIONS), options.sessions, rng)
        pool = replay_texts(options.data, options.texts * len(REGIONS), rng)
        source = f"replayed from {options.data}"
    else:
        outcomes = [synthetic_sessions(options.sessions, region, rng) for region in REGIONS]
        pool = grammar_texts(options.texts * len(REGIONS), emotion_labels, rng)
        source = "synthetic (nexus_tools/traffic.py)"
    texts = [pool[i :: len(REGIONS)] for i in range(len(REGIONS))]
    return Workload(outcomes, texts, source)


def _feed(recorder: Recorder, edge: Edge, outcomes: list[Outcome], texts: list[Example], stop: threading.Event) -> None:
    """An app's calls: score sessions and store their outcomes; classify texts and store feedback."""
    name = f"edge-{edge.region}"
    with httpx.Client(base_url=edge.url, timeout=30) as http:
        for row in outcomes:
            if stop.is_set():
                return
            recorder.call(http, name, "funnel score", "/v1/funnel/score", {"session": row.session}).raise_for_status()
            recorder.call(
                http, name, "funnel outcome", "/v1/funnel/outcome", {"session": row.session, "converted": row.converted}
            ).raise_for_status()
        for text, labels in texts:
            if stop.is_set():
                return
            recorder.call(http, name, "emotion", "/v1/emotion", {"texts": [text]}).raise_for_status()
            recorder.call(http, name, "feedback", "/v1/feedback", {"text": text, "labels": labels}).raise_for_status()


def _visitors(recorder: Recorder, edge: Edge, index: int, options: Options, stop: threading.Event) -> Tally:
    visitors = [f"visitor-{i}" for i in range(index, options.visitors, len(REGIONS))]
    with httpx.Client(base_url=edge.url, timeout=30) as http:
        return walk_visitors(
            recorder, http, f"edge-{edge.region}", FUNNEL, visitors, TRUTH, options.seed + edge.region, stop
        )


def _serves(edge: Edge, version: str, session: dict[str, Any]) -> bool:
    try:
        answer = httpx.post(edge.url + "/v1/funnel/score", json={"session": session}, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    return answer.get("model_version") == version


def _has_experiment(edge: Edge) -> bool:
    try:
        document = json.loads(EdgeDataDir(edge.data_dir).funnel_config.read_text())["document"]
    except (OSError, ValueError, KeyError):
        return False
    return any(e["id"] == EXPERIMENT and e["status"] == "running" for e in document["experiments"])


def _ready(edge: Edge) -> bool:
    try:
        return httpx.get(edge.url + "/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _push_models(admin: FunnelClient, repository: Path) -> dict[str, str]:
    versions = {}
    for model in ("emotion", "funnel"):
        local = list_versions(repository, model)
        if not local:
            raise NexusError(f"{repository} has no {model} bundle")
        pushed = admin.push(repository / model / local[-1])
        admin.promote(model, pushed["version"], "stable")
        versions[model] = pushed["version"]
    return versions


def _experiment_summary(results: dict[str, Any], sent: Tally) -> dict[str, Any]:
    variants = []
    for v in results["variants"]:
        buy = next(s for s in v["steps"] if s["step"] == results["decision_step"])
        variants.append({
            "name": v["name"], "assigned": v["assigned"], "converted": buy["reached"], "rate": buy["rate"],
            "prob_beat_control": buy["prob_beat_control"], "expected_loss": buy["expected_loss"],
            "sent_assigned": sent.assigned[v["name"]],
            "sent_converted": sent.reached[(v["name"], results["decision_step"])],
        })  # fmt: skip
    truth = {name: round(float(np.prod(rates)), 4) for name, rates in TRUTH.rates.items()}
    b = next(v for v in variants if v["name"] == "B")
    return {"id": results["experiment_id"], "allocation": results["allocation"],
            "decision_step": results["decision_step"], "control": results["control"],
            "truth": truth, "visitors": sum(sent.assigned.values()), "variants": variants,
            "prob_b_beats_a": b["prob_beat_control"], "srm": results.get("srm")}  # fmt: skip


def _audit(data_dir: Path) -> dict[str, Any]:
    """What a privacy officer's ``nexus audit verify`` says of the edge's log right now, and
    which of its sends the hub's receipts cover, per channel (HTTP sync, Flower; acknowledgements
    of receipts get none by design)."""
    result = verify(data_dir)
    reader = AuditReader(data_dir)
    receipted = set(reader.receipts())
    channels: dict[str, list[int]] = {}
    for entry in (e for e in reader.entries(SEND) if e.kind != RECEIPT_ACK):
        sent = channels.setdefault(entry.channel, [0, 0])
        sent[0] += 1
        sent[1] += entry.id in receipted
    return {
        "ok": result.ok,
        "message": result.message(),
        "entries": result.entries,
        "sends": {channel: {"messages": n, "receipts": r} for channel, (n, r) in sorted(channels.items())},
    }


def _rounds_summary(run: dict[str, Any], seconds: float) -> dict[str, Any]:
    keys = ("round", "participants", "train_loss", "loss", "score", "bytes_out", "bytes_in", "duration_s")
    return {"run_id": run["run_id"], "status": run["status"], "score_name": run["score_name"],
            "base_version": run["base_version"], "version": run["version"], "seconds": round(seconds, 1),
            "rounds": [{k: r.get(k) for k in keys} for r in run["rounds"]]}  # fmt: skip


def run_demo(options: Options, stages: Stages) -> tuple[dict[str, Any], contextlib.ExitStack]:
    """Everything up to the summary. The caller owns the returned stack (it stops the nodes)."""
    stack = contextlib.ExitStack()
    try:
        if options.data_dir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexus-demo-")))
        else:
            root = options.data_dir
            if root.exists() and any(root.iterdir()):
                raise NexusError(f"{root} is not empty: the demo needs a fresh data dir")
            root.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(root)
        stack.callback(cluster.stop)
        summary = _run(options, stages, cluster, stack)
        return summary, stack
    except BaseException:
        stack.close()
        raise


def _run(options: Options, stages: Stages, cluster: Cluster, stack: contextlib.ExitStack) -> dict[str, Any]:
    recorder, stop = Recorder(), threading.Event()
    stack.callback(stop.set)
    stages(f"starting the hub (SQLite store, Flower SuperLink on 127.0.0.1:{cluster.superlink_port})")
    admin = stack.enter_context(cluster.start_hub())
    base = _push_models(admin, options.models)
    stages(
        f"hub on {cluster.hub.url}: emotion v{base['emotion']} and funnel v{base['funnel']}"
        " registered and promoted to stable"
    )

    cluster.start_edges({region: admin.create_token({"region": str(region)})["token"] for region in REGIONS})
    for edge in cluster.edges:
        stages(
            f"edge {edge.region} on {edge.url} up (region={edge.region}):"
            " enrolling, then its SuperNode joins the SuperLink"
        )
    wait_until(lambda: all(_ready(e) for e in cluster.edges), 120, "the edges to load the hub's models")
    stages("all edges serve the hub's models")

    labels = read_manifest(newest_bundle(options.models, "emotion"))["labels"]
    work = _workload(options, labels)
    stages(
        f"traffic ({work.source}): {options.sessions} sessions and {options.texts} texts per edge,"
        " scored and stored as local training data"
    )
    gather(
        start_jobs(
            [
                functools.partial(_feed, recorder, e, work.outcomes[i], work.texts[i])
                for i, e in enumerate(cluster.edges)
            ],
            stop,
        ),
        stop,
    )

    admin.create_funnel(FUNNEL, list(TRUTH.steps))
    variants = [{"name": name, "weight": 1.0} for name in TRUTH.rates]
    admin.create_experiment(
        {
            "id": EXPERIMENT,
            "funnel_id": FUNNEL,
            "variants": variants,
            "decision_step": TRUTH.steps[-1],
            "allocation": options.allocation,
            "salt": "demo",
        }
    )
    admin.start(EXPERIMENT)
    wait_until(lambda: all(_has_experiment(e) for e in cluster.edges), 60, "the edges to pull the experiment")
    stages(
        f"funnel {FUNNEL!r} {'>'.join(TRUTH.steps)} and {options.allocation} experiment {EXPERIMENT!r}"
        " (A vs B) running on every edge"
    )

    wait_until(
        lambda: cluster.online_supernodes() == len(REGIONS), 120, "three SuperNodes at the hub's SuperLink", every=1.0
    )
    stages(
        "3 SuperNodes online; federated run: 2 rounds of the funnel model, min 3 nodes;"
        " visitors walk the funnel meanwhile"
    )
    started = time.monotonic()
    # promoted only if the gate finds it better than the stable version it started from (hub/promotion_gate.py)
    run = admin.start_run(
        {"model": "funnel", "rounds": 2, "min_nodes": len(REGIONS), "timeout_s": 90, "deadline_s": 600,
         "auto_promote": True, "promote_margin": 0.0}
    )  # fmt: skip
    walkers = start_jobs(
        [functools.partial(_visitors, recorder, e, i, options) for i, e in enumerate(cluster.edges)], stop
    )
    run = admin.wait_run(run["run_id"], poll_s=1.0, show_progress=True)
    rounds_seconds = time.monotonic() - started
    if run["status"] != "finished":
        raise NexusError(f"federated run {run['run_id']} {run['status']}: {run.get('reason')}")
    version = run["version"]
    stages(f"run {run['run_id']} finished in {rounds_seconds:.0f} s: candidate funnel v{version}")
    sent = Tally()
    for tally in gather(walkers, stop):
        sent.merge(tally)
    stages(f"{sum(sent.assigned.values())} visitors through the funnel")

    promoted = str(run.get("reason") or "").startswith("auto-promoted")
    served = version if promoted else run["base_version"]
    probe = work.outcomes[0][0].session
    wait_until(
        lambda: all(_serves(e, served, probe) for e in cluster.edges), 60, f"every edge to serve funnel v{served}"
    )
    if promoted:
        stages(f"funnel v{version} {run['reason']} by the promotion gate; served by every edge")
    else:
        stages(f"funnel v{version} held back by the promotion gate ({run.get('reason')}); edges keep v{served}")
    # the app's traffic now gets the new version's answers
    gather(
        start_jobs(
            [functools.partial(_feed, recorder, e, work.outcomes[i][:20], []) for i, e in enumerate(cluster.edges)],
            stop,
        ),
        stop,
    )

    def hub_has_every_count() -> bool:
        results = admin.results(EXPERIMENT)
        return all(
            v["assigned"] == sent.assigned[v["name"]]
            and all(s["reached"] == sent.reached[(v["name"], s["step"])] for s in v["steps"])
            for v in results["variants"]
        )

    wait_until(hub_has_every_count, 30, "the edges' counters to reach the hub", every=0.5)
    experiment = _experiment_summary(admin.results(EXPERIMENT), sent)
    stages("experiment counters merged at the hub")

    nodes = {n["tags"].get("region"): n for n in admin.nodes()}
    edges: list[dict[str, Any]] = []
    for edge in cluster.edges:
        node = nodes.get(str(edge.region), {})
        answered: dict[str, dict[str, int]] = {}
        for (name, model, served_version), count in sorted(recorder.served.items()):
            if name == f"edge-{edge.region}":
                answered.setdefault(model, {})[served_version] = count
        edges.append({"region": edge.region, "url": edge.url, "node_id": node.get("node_id"),
                      "status": node.get("status"), "heartbeat_models": (node.get("heartbeat") or {}).get("models"),
                      "answers": answered, "audit": _audit(edge.data_dir)})  # fmt: skip
    return {
        "wall_s": round(stages.elapsed(), 1),
        "keep": options.keep,
        "hub": {
            "url": cluster.hub.url,
            "dashboard": cluster.hub.url + "/dashboard",
            "admin_token_file": str(HubDataDir(cluster.hub_dir).admin_token),
            "superlink": f"127.0.0.1:{cluster.superlink_port}",
            "data_dir": str(cluster.root),
        },
        "edges": edges,
        "traffic": {"source": work.source, **recorder.summary()},
        "federated": _rounds_summary(run, rounds_seconds),
        "experiment": experiment,
        "model": {
            "name": "funnel",
            "base_version": run["base_version"],
            "version": version,
            "stage": "stable" if promoted else "candidate",
            "promoted": promoted,
            # the promotion gate's comparison and decision
            "gate": run.get("gate"),
            "decision": run.get("reason"),
            "served_by": sum(1 for e in edges if version in e["answers"].get("funnel", {})),
        },
    }


# -- output -------------------------------------------------------------------------------------


def _fmt(value: Any, pattern: str = "{:.4f}") -> str:
    return "-" if value is None else pattern.format(value)


def summary_text(s: dict[str, Any]) -> list[str]:
    t, f, x = s["traffic"], s["federated"], s["experiment"]
    lines = [
        f"nexus demo: the whole system ran on loopback in {s['wall_s']:.0f} s",
        "",
        "edges (model versions that answered this run's requests):",
    ]
    for e in s["edges"]:
        answers = "; ".join(
            f"{model} " + ", ".join(f"v{v}: {n}" for v, n in versions.items())
            for model, versions in e["answers"].items()
        )
        lines.append(f"  region {e['region']}  {e['url']}  node {e['node_id']}  {answers}")
    lines += [
        "",
        f"traffic ({t['source']}): {t['requests']} requests, {t['errors']} errors,"
        f" p50 {_fmt(t['p50_ms'], '{:.1f}')} ms",
    ]
    for route, r in t["routes"].items():
        lines.append(
            f"  {route:<15} {r['requests']:>6} requests  p50 {r['p50_ms']:>6.1f} ms  p99 {r['p99_ms']:>6.1f} ms"
        )
    lines += ["", f"federated run {f['run_id']} ({f['seconds']:.0f} s): funnel v{f['base_version']} -> v{f['version']}",
              f"  {'ROUND':>5} {'NODES':>5} {'LOSS':>8} {f['score_name'].upper():>8}"
              f" {'BYTES_OUT':>10} {'BYTES_IN':>9} {'SECONDS':>8}"]  # fmt: skip
    for r in f["rounds"]:
        lines.append(
            f"  {r['round']:>5} {r['participants']:>5} {_fmt(r['loss']):>8} {_fmt(r['score']):>8}"
            f" {r['bytes_out']:>10} {r['bytes_in']:>9} {_fmt(r['duration_s'], '{:.1f}'):>8}"
        )
    lines += [
        "",
        f"experiment {x['id']} ({x['allocation']}, {x['visitors']} visitors; truth: "
        + ", ".join(f"{k} buys {v:.0%}" for k, v in x["truth"].items())
        + "):",
    ]
    for v in x["variants"]:
        beats = f"  P(beats {x['control']}) = {_fmt(v['prob_beat_control'], '{:.3f}')}"
        lines.append(
            f"  {v['name']}: {_fmt(v['converted'], '{}')}/{_fmt(v['assigned'], '{}')}"
            f" bought = {_fmt(v['rate'], '{:.1%}')}" + (beats if v["name"] != x["control"] else "")
        )
    lines += [
        "",
        "privacy (each edge's audit log, as `nexus audit verify` sees it; sends with the hub's signed receipt):",
    ]
    for e in s["edges"]:
        a = e["audit"]
        sends = ", ".join(f"{ch} {c['receipts']}/{c['messages']}" for ch, c in a["sends"].items())
        lines.append(
            f"  region {e['region']}  {'intact' if a['ok'] else 'NOT INTACT'}, {a['entries']} entries; {sends}"
        )
    m, hub = s["model"], s["hub"]
    lines += ["", f"new model: funnel v{m['version']} ({m['stage']}, parent v{m['base_version']}: {m['decision']})"
                  f" served by {m['served_by']}/{len(s['edges'])} edges",
              f"dashboard: {hub['dashboard']} (log in with the admin token in {hub['admin_token_file']})"]  # fmt: skip
    if not s["keep"]:
        lines.append("  (every node stops now; run `nexus demo --keep` to open it)")
    return lines


def _run_cli(args: argparse.Namespace) -> int:
    if args.standalone:
        run_standalone(models_dir=args.models)
        return 0
    options = Options(data_dir=args.data_dir, data=args.data, models=args.models or DEFAULT_REPOSITORY,
                      sessions=args.sessions, texts=args.texts, visitors=args.visitors,
                      allocation=args.allocation, keep=args.keep)  # fmt: skip
    stages = Stages(sys.stderr)
    with _sigterm_as_interrupt():
        summary, stack = run_demo(options, stages)
        with stack:
            print(json.dumps(summary) if args.json else "\n".join(summary_text(summary)), flush=True)
            if options.keep:
                stages(f"running; open {summary['hub']['dashboard']} - Ctrl-C stops every node")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            stages("stopping the edges, their SuperNodes, the hub and its SuperLink")
    stages("done")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="run a hub and three edges on loopback with traffic, an experiment and federated rounds"
    )
    demo.add_argument(
        "--data-dir", type=Path, help="an empty folder for every node's data (default: a temp dir, removed at the end)"
    )
    demo.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="replay the shared data sets (online-shoppers/, goemotions-ekman/) instead of synthetic traffic "
        "(default: synthetic)",
    )
    demo.add_argument(
        "--models", type=Path, help="model repository with the bundles to start from (default: the shipped bundles)"
    )
    demo.add_argument(
        "--sessions", type=int, default=Options.sessions, help="sessions per edge, scored and stored as outcomes"
    )
    demo.add_argument(
        "--texts", type=int, default=Options.texts, help="texts per edge, classified and stored as feedback"
    )
    demo.add_argument(
        "--visitors", type=int, default=Options.visitors, help="visitors through the experiment, over all edges"
    )
    demo.add_argument(
        "--allocation",
        choices=("fixed", "thompson"),
        default=Options.allocation,
        help="how the experiment splits visitors: fixed weights or Thompson sampling",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep everything running after the summary until Ctrl-C (open the dashboard)",
    )
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument(
        "--standalone", action="store_true", help="the one-edge tour: calls and answers of a node without a hub"
    )
    demo.set_defaults(func=_run_cli)


# -- the one-edge tour (--standalone) --------------------------------------------------------------

TEXTS = [
    "Thank you so much, the delivery was faster than I hoped!",
    "This is the third time my order is late. I am furious.",
    "I'm a bit worried the size won't fit.",
]


class Console:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def section(self, title: str) -> None:
        print(f"\n== {title}", file=self.out)

    def call(
        self, client: httpx.Client, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> httpx.Response:
        shown = raw.decode(errors="replace") if raw is not None else json.dumps(body) if body is not None else ""
        # Long bodies keep their end, where the interesting field usually is.
        shown = shown if len(shown) <= 160 else shown[:80] + " ... " + shown[-70:]
        print(f"-> {method} {path} {shown}", file=self.out)
        if raw is not None:
            response = client.request(method, path, content=raw, headers={"content-type": "application/json"})
        else:
            response = client.request(method, path, json=body)
        print(f"<- {response.status_code} {response.text[:400]}", file=self.out)
        return response


def _show_edge(console: Console, edge: ServerProcess) -> None:
    with httpx.Client(base_url=edge.url, timeout=10.0) as client:
        console.section(f"edge node on {edge.url}")
        console.call(client, "GET", "/v2/health/ready")

        console.section("emotion of a few texts")
        answer = console.call(client, "POST", "/v1/emotion", {"texts": TEXTS}).json()
        for text, result in zip(TEXTS, answer.get("results", [])):
            labels = ", ".join(result["labels"]) or "-"
            print(f"   {result['top']:>9}  [{labels}]  {text}", file=console.out)

        console.section("purchase probability of a session")
        answer = console.call(client, "POST", "/v1/funnel/score", {"session": SESSION}).json()
        if "probabilities" in answer:
            print(
                f"   P(purchase) = {answer['probabilities'][0]:.3f} (funnel model version {answer['model_version']})",
                file=console.out,
            )

        console.section("Open Inference Protocol v2")
        console.call(client, "GET", "/v2/models/emotion")
        console.call(
            client,
            "POST",
            "/v2/models/emotion/infer",
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}]},
        )

        console.section("bad requests get a 4xx naming the problem")
        console.call(client, "POST", "/v1/emotion", {"texts": []})
        console.call(client, "POST", "/v1/funnel/score", {"sessions": [{**SESSION, "BounceRates": "high"}]})
        console.call(client, "POST", "/v1/emotion", raw=b"{not json")
        console.call(client, "GET", "/v2/models/churn")


def run_standalone(out: TextIO = sys.stdout, models_dir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="nexus-demo-") as tmp:
        print("starting an edge node on loopback ...", file=out, flush=True)
        port = free_port()
        with ServerProcess("edge", edge_argv(port, models_dir=models_dir, data_dir=Path(tmp) / "edge-1"), port) as edge:
            _show_edge(Console(out), edge)
            print("\nstopping ...", file=out, flush=True)
    print("done.", file=out)
