"""The funnel simulation over real HTTP on 127.0.0.1: one hub (uvicorn in a thread, SQLite
store) and three ``nexus edge serve`` processes, driven by tests/support/funnels.py's
``run_visitors`` with the same known truth (A buys 10%, B 14%).

Stated levels (docs/funnels.md), with a sync every 300 visitors: ``thompson`` gives B more
than THOMPSON_SHARE of visitors 901-1,800, and ``fixed`` reports P(B beats A at buy)
> 0.95 after 4,000 visitors. Then the exactness scenario: hub totals
equal the sum of the edges' local counts after duplicate reports, an edge restart and a
hub outage during which the edges keep assigning and counting.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_worker.identity import load_identity
from edge_worker.store import LocalStore
from hub.app import create_app
from hub.client import FunnelClient
from hub.counters import totals
from hub.settings import HubSettings
from hub.store import open_store
from nexus_tools.processes import ServerProcess, ServerThread, edge_argv, free_port
from nexus_wire.counters import CounterKey
from nexus_wire.datadir import HubDataDir
from tests.support.funnels import FUNNEL, SEED, TRUTH, run_visitors
from tests.support.processes import wait_for

HTTP_VISITORS = 4_000  # fixed
BANDIT_VISITORS = 1_800  # thompson
CADENCE = 300
THOMPSON_SHARE = 0.70  # B's share of visitors 901-1,800 must exceed this
SYNC_S = 0.2  # edges' funnel sync interval
THOMPSON_S = 0.3  # hub's Thompson cadence
WORKERS = 9  # concurrent visitors


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub_dir = root / "hub"
        self.settings = HubSettings(data_dir=self.hub_dir, thompson_interval_s=THOMPSON_S, poll_interval_s=1.0)
        self.hub_port = free_port()
        self.start_hub()
        tokens = [self.admin.create_token({"edge": str(i)})["token"] for i in range(3)]
        self.edge_ports = [free_port() for _ in range(3)]
        with ThreadPoolExecutor(3) as pool:
            self.edges = list(pool.map(self.start_edge, range(3), tokens))
        wait_for(lambda: all(load_identity(self.data_dir(i)) for i in range(3)), timeout=30, what="edges enrolled")

    def data_dir(self, i: int) -> Path:
        return self.root / f"edge-{i}" / "data"

    def start_hub(self) -> None:
        self.store = open_store(self.settings.store_url())
        self.hub = ServerThread(create_app(self.settings, self.store), port=self.hub_port).start()
        self.admin = FunnelClient(self.hub.url, HubDataDir(self.hub_dir).admin_token.read_text().strip())

    def stop_hub(self) -> None:
        self.admin.close()
        self.hub.stop()  # the lifespan closes the store

    def start_edge(self, i: int, token: str | None = None) -> ServerProcess:
        models = self.root / f"edge-{i}" / "models"  # no models: funnels need none
        models.mkdir(parents=True, exist_ok=True)
        argv = [*edge_argv(self.edge_ports[i], models_dir=models, data_dir=self.data_dir(i)), "--hub", self.hub.url]
        argv += [f"--enroll-token={token}"] if token else []  # "=": a token may start with "-"
        env = {"NEXUS_MODELS": "funnel", "NEXUS_FUNNEL_SYNC_S": str(SYNC_S)}
        return ServerProcess(f"edge-{i}", argv, self.edge_ports[i], env=env, ready_path="/v2/health/live").start()

    def edge_of(self, visitor: str) -> int:
        return int(visitor.rsplit("-", 1)[1]) % 3

    def local_counts(self) -> dict[CounterKey, int]:
        """The sum of the edges' own counts, read from their stores (what the hub must equal)."""
        summed: dict[CounterKey, int] = {}
        for i in range(3):
            store = LocalStore(self.data_dir(i))
            for key, count in store.funnel_counts().items():
                summed[key] = summed.get(key, 0) + count
            store.close()
        return summed

    def hub_counts(self, experiment: str) -> dict[CounterKey, int]:
        return totals(self.store.counter_state(experiment))

    def edge_version(self, i: int, experiment: str) -> int | None:
        try:
            document = json.loads((self.data_dir(i) / "funnel-config.json").read_text())["document"]
        except FileNotFoundError:
            return None
        return next((e["version"] for e in document["experiments"] if e["id"] == experiment), None)

    def run(self, funnel: str, visitors: list[str], seed: int) -> dict[str, str]:
        """Visitors through the funnel, each on its edge, WORKERS at a time. Each visitor has its
        own random stream, so the outcome does not depend on the interleaving."""
        local = threading.local()

        def one(visitor: str) -> str:
            if not hasattr(local, "http"):
                local.http = [httpx.Client(base_url=e.url, timeout=10) for e in self.edges]
                opened.append(local.http)
            http = local.http[self.edge_of(visitor)]

            def assign(v: str) -> str:
                reply = http.post(f"/v1/funnels/{funnel}/assign", json={"visitor_id": v})
                reply.raise_for_status()
                return reply.json()["variant"]

            def record(v: str, step: str) -> None:
                http.post(f"/v1/funnels/{funnel}/events", json={"visitor_id": v, "step": step}).raise_for_status()

            rng = np.random.default_rng([seed, int(visitor.rsplit("-", 1)[1])])
            return run_visitors([visitor], assign, record, FUNNEL.steps, TRUTH, rng)[0]

        opened: list[list[httpx.Client]] = []
        try:
            with ThreadPoolExecutor(WORKERS) as pool:
                return dict(zip(visitors, pool.map(one, visitors)))
        finally:
            for clients in opened:
                for client in clients:
                    client.close()

    def synced(self, experiment: str, timeout: float = 15.0) -> None:
        """Wait until the hub holds exactly what the edges counted."""
        wait_for(
            lambda: self.hub_counts(experiment) == {k: c for k, c in self.local_counts().items() if k[0] == experiment},
            timeout=timeout,
            what=f"hub totals of {experiment} to equal the edges' counts",
        )

    def stop(self) -> None:
        for edge in self.edges:
            edge.stop()
        self.stop_hub()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("funnels-e2e"))
    yield running
    running.stop()


def define(cluster: Cluster, funnel: str, experiment: str, allocation: str) -> None:
    cluster.admin.create_funnel(funnel, list(FUNNEL.steps))
    cluster.admin.create_experiment(
        {
            "id": experiment,
            "funnel_id": funnel,
            "variants": [{"name": "A"}, {"name": "B"}],
            "decision_step": "buy",
            "allocation": allocation,
        }
    )
    version = cluster.admin.start(experiment)["version"]
    wait_for(
        lambda: all(cluster.edge_version(i, experiment) == version for i in range(3)),
        timeout=10,
        what="edges to pull the config",
    )


def test_thompson_moves_traffic_to_b_over_http(cluster: Cluster) -> None:
    define(cluster, "shop-t", "bandit", "thompson")
    given: dict[str, str] = {}
    shares = []
    for start in range(0, BANDIT_VISITORS, CADENCE):
        batch = [f"visitor-{i}" for i in range(start, start + CADENCE)]
        got = cluster.run("shop-t", batch, SEED)
        given.update(got)
        shares.append(round(list(got.values()).count("B") / len(got), 3))
        cluster.synced("bandit")
        # the hub publishes new weights on its cadence (none when they moved < 0.001);
        # the edges pull them before the next batch
        time.sleep(2 * THOMPSON_S)
        latest = cluster.admin.experiment("bandit")["version"]
        wait_for(
            lambda v=latest: all(cluster.edge_version(i, "bandit") == v for i in range(3)),
            timeout=10,
            what="edges to pull new weights",
        )
    late = [given[f"visitor-{i}"] for i in range(BANDIT_VISITORS // 2, BANDIT_VISITORS)]
    share_b = late.count("B") / len(late)
    history = cluster.admin.history("bandit")
    print(
        f"thompson over HTTP: B share of visitors {BANDIT_VISITORS // 2 + 1}-{BANDIT_VISITORS} = {share_b:.3f};"
        f" per batch {shares}; "
        f"final weights {history[-1]['weights']}; {len(history)} config versions"
    )
    assert share_b > THOMPSON_SHARE
    assert history[-1]["weights"]["A"] >= 0.05  # the floor keeps the loser alive


def test_fixed_reports_b_better_over_http(cluster: Cluster) -> None:
    define(cluster, "shop-f", "ab", "fixed")
    cluster.run("shop-f", [f"visitor-{i}" for i in range(HTTP_VISITORS)], SEED + 1)
    cluster.synced("ab")
    results = cluster.admin.results("ab")
    a, b = results["variants"]
    buy_a, buy_b = a["steps"][2], b["steps"][2]
    print(
        f"fixed over HTTP: A {buy_a['reached']}/{a['assigned']}, B {buy_b['reached']}/{b['assigned']}, "
        f"P(B beats A) {buy_b['prob_beat_control']:.4f}, loss(B) {buy_b['expected_loss']:.5f},"
        f" SRM p {results['srm']['p_value']:.3f}"
    )
    assert a["assigned"] + b["assigned"] == HTTP_VISITORS
    assert buy_b["prob_beat_control"] > 0.95
    assert not results["srm"]["mismatch"]


def test_hub_totals_equal_edge_counts_through_duplicates_restart_and_outage(cluster: Cluster) -> None:
    define(cluster, "shop-x", "exact", "fixed")
    cluster.run("shop-x", [f"visitor-{i}" for i in range(150)], SEED + 2)
    cluster.synced("exact")
    # a duplicate and a stale report (what a retry or a late packet delivers): nothing changes
    identity = load_identity(cluster.data_dir(0))
    assert identity is not None
    before = cluster.hub_counts("exact")
    mine = {k: c for k, c in LocalStore(cluster.data_dir(0)).funnel_counts().items() if k[0] == "exact"}
    stale = {k: c // 2 for k, c in mine.items()}
    for counts in (mine, stale, mine):
        body = {
            "node_id": identity.node_id,
            "counts": [{"experiment": e, "variant": v, "step": s, "count": c} for (e, v, s), c in counts.items()],
        }
        httpx.post(
            cluster.hub.url + "/v1/nodes/me/counters",
            json=body,
            headers={"Authorization": f"Bearer {identity.credential()}"},
        ).raise_for_status()
    assert cluster.hub_counts("exact") == before
    # hub outage: edges keep assigning and counting; one edge restarts meanwhile (cached config, no hub)
    cluster.stop_hub()
    cluster.run("shop-x", [f"visitor-{i}" for i in range(150, 300)], SEED + 2)
    cluster.edges[1].stop()
    cluster.edges[1] = cluster.start_edge(1)
    cluster.run("shop-x", [f"visitor-{i}" for i in range(300, 450)], SEED + 2)
    # repeats of old visitors' steps are deduplicated on the edges
    replay = httpx.post(
        cluster.edges[2].url + "/v1/funnels/shop-x/events", json={"visitor_id": "visitor-2", "step": "view"}
    ).json()
    assert replay["counted"] is False
    local = cluster.local_counts()
    assert sum(c for (e, _, s), c in local.items() if e == "exact" and s == "$assigned") == 450
    cluster.start_hub()
    cluster.synced("exact", timeout=30)  # everything arrives once the hub is back
    assert sum(c for (_, _, s), c in cluster.hub_counts("exact").items() if s == "$assigned") == 450
