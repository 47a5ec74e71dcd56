"""Three ``nexus hub serve`` replicas on one Redis behind a round-robin proxy, 20 real
``nexus edge serve`` processes, and the replica that drives rounds killed mid-traffic with
its SuperLink (the loss of its machine, not only of its process).

Shown: every funnel counter the edges counted is on the hub exactly once (none lost, none
counted twice), every edge converges to the version promoted during the failure, the
dashboard works on any replica (a session made on one holds on the others, a logout on one
ends it on all), the rounds lease moves to a live replica with a higher fencing token, and
the new driver's SuperLink, started on the same ``--database``, still knows the run
submitted before the failure (docs/deploy.md, "Replicas").
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edge_worker.store import LocalStore
from hub.client import FunnelClient
from hub.counters import totals
from hub.lease import ROUNDS_LEASE, Holder
from hub.store import open_store
from hub.store.redis import RedisStore
from hub.superlink import CONNECTION, SuperLink, SuperLinkConfig
from hub.superlink_keeper import loopback_port
from nexus_tools.processes import free_port
from nexus_wire.counters import CounterKey
from nexus_wire.datadir import HubDataDir
from tests.support.env import need, port_open
from tests.support.processes import BIN, EdgeProcess, HubProcess, wait_for
from tests.support.replicas import RoundRobinProxy, funnel_bundles, kill_with_children

REPLICAS = 3
EDGES = 20
#: a separate Redis database from the hub tests' (15) and the bench's
REDIS = "redis://127.0.0.1:6379/13"
LEASE_TTL_S = 3.0
POLL_S = 1.0


class Edge(EdgeProcess):
    extra_env = {"NEXUS_FUNNEL_SYNC_S": "0.5"}


class ReplicaSet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "hub"  # one host: the replicas share the data dir (key, token, SuperLink state)
        self.url = f"{REDIS}?prefix=replicas:{uuid.uuid4().hex[:8]}:"
        self.superlink_port = free_port()
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.hubs: dict[int, HubProcess] = {}
        self.start(self.ports[0])  # the first makes the key and the admin token the others share
        with ThreadPoolExecutor(REPLICAS - 1) as pool:
            list(pool.map(self.start, self.ports[1:]))
        self.store = open_store(self.url)
        self.proxy = RoundRobinProxy(self.ports).start()
        self.token = HubDataDir(self.data_dir).admin_token.read_text().strip()
        self.admin = FunnelClient(self.proxy.url, self.token)
        self.edges: list[Edge] = []

    def start(self, port: int) -> None:
        self.hubs[port] = HubProcess(
            self.data_dir,
            port,
            "--store", self.url,
            "--poll-interval", str(POLL_S),
            "--superlink-port", str(self.superlink_port),
            "--lease-ttl", str(LEASE_TTL_S),
            "--thompson-interval", "3600",
        )  # fmt: skip

    def driver(self) -> tuple[int, Holder]:
        lease = self.store.get_lease(ROUNDS_LEASE)
        assert lease is not None, "no replica holds the rounds lease"
        holder = Holder.parse(lease.holder)
        assert holder is not None
        return lease.token, holder

    def replica(self, port: int) -> FunnelClient:
        return FunnelClient(f"http://127.0.0.1:{port}", self.token)

    def stop(self) -> None:
        for edge in self.edges:
            edge.stop()
        self.admin.close()
        self.proxy.stop()
        for hub in self.hubs.values():
            hub.stop()
        assert isinstance(self.store, RedisStore)
        self.store.delete_all()
        self.store.close()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[ReplicaSet]:
    need(port_open("127.0.0.1", 6379), "no Redis server on 127.0.0.1:6379")
    need((BIN / "flower-superlink").exists(), "Flower's binaries are not installed in this environment")
    running = ReplicaSet(tmp_path)
    yield running
    running.stop()


class Traffic:
    """Visitors sent to the edges from a few threads until stopped; each edge counts them locally."""

    def __init__(self, edges: list[Edge], funnel: str) -> None:
        self.edges, self.funnel = edges, funnel
        self.sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(4)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def _run(self, worker: int) -> None:
        clients = [httpx.Client(base_url=e.url, timeout=10) for e in self.edges]
        n = 0
        while not self._stop.is_set():
            edge = (worker + 4 * n) % len(self.edges)
            visitor = f"v-{worker}-{n}"
            for step in ("view", "cart") if n % 3 else ("view",):
                clients[edge].post(
                    f"/v1/funnels/{self.funnel}/events", json={"visitor_id": visitor, "step": step}
                ).raise_for_status()
            n += 1
            self.sent += 1
            time.sleep(0.01)
        for c in clients:
            c.close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _local_counts(edges: list[Edge], experiment: str) -> dict[CounterKey, int]:
    summed: dict[CounterKey, int] = {}
    for edge in edges:
        store = LocalStore(edge.root / "data")
        for key, count in store.funnel_counts().items():
            if key[0] == experiment:
                summed[key] = summed.get(key, 0) + count
        store.close()
    return summed


def _login(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=10)
    reply = client.post("/dashboard/login", data={"token": token})
    assert reply.status_code == 303, reply.text
    return client


@pytest.mark.slow
def test_three_replicas_lose_the_driver_mid_traffic(replicas: ReplicaSet, tmp_path: Path) -> None:
    began = time.monotonic()
    r = replicas
    old_dir, new_dir = funnel_bundles(tmp_path)
    old = r.admin.push(old_dir)["version"]
    r.admin.promote("funnel", old, "stable")
    r.admin.create_funnel("shop", ["view", "cart", "buy"])
    experiment = {"id": "exp", "funnel_id": "shop", "variants": [{"name": "A"}, {"name": "B"}], "decision_step": "cart"}
    r.admin.create_experiment(experiment)
    r.admin.start("exp")
    tokens = [r.admin.create_token({"region": str(i % 4)})["token"] for i in range(EDGES)]
    r.edges.extend(Edge(tmp_path / f"edge-{i}", r.proxy.url, t) for i, t in enumerate(tokens))
    wait_for(lambda: all(e.served() == old for e in r.edges), timeout=90, what=f"{EDGES} edges serving {old}")
    ready = time.monotonic()
    assert len(r.admin.nodes()) == EDGES

    token_before, driver = r.driver()
    driver_port = int(driver.url.rsplit(":", 1)[1])
    others = [p for p in r.ports if p != driver_port]
    # a round started on a replica that does not drive is forwarded to the one that does
    run = r.replica(others[0]).start_run({"model": "funnel", "rounds": 1, "min_nodes": 50, "deadline_s": 600})
    assert run["status"] == "running" and run["flower_run_id"] is not None

    with Traffic(r.edges, "shop") as traffic:
        time.sleep(3)
        new = r.admin.push(new_dir)["version"]
        killed_at = time.monotonic()
        kill_with_children(r.hubs[driver_port])
        r.admin.promote("funnel", new, "stable")  # the proxy hands it to a live replica
        wait_for(
            lambda: r.store.get_lease(ROUNDS_LEASE) is not None and r.driver()[1] != driver,
            timeout=4 * LEASE_TTL_S,
            what="another replica to take the rounds lease",
        )
        took_over = time.monotonic() - killed_at
        wait_for(lambda: all(e.served() == new for e in r.edges), timeout=60, what=f"every edge serving {new}")
        converged = time.monotonic() - killed_at
        time.sleep(2)
    token_after, successor = r.driver()
    assert token_after > token_before and successor.url != driver.url

    # every count is on the hub exactly once: max-merged per node, reported again after a failure
    local = _local_counts(r.edges, "exp")
    assert sum(local.values()) >= traffic.sent > 100
    wait_for(
        lambda: totals(r.store.counter_state("exp")) == local,
        timeout=20,
        what="the hub's counters to equal the edges' own",
    )

    # the dashboard on every live replica: one session, a logout on one ends it on all
    live = [p for p in r.ports if p != driver_port]
    session = _login(f"http://127.0.0.1:{live[0]}", r.token)
    cookies = dict(session.cookies)
    for port in live:
        page = httpx.get(f"http://127.0.0.1:{port}/dashboard/nodes", cookies=cookies, timeout=10)
        assert page.status_code == 200 and len(set(re.findall(r"n-[0-9a-f]{16}", page.text))) == EDGES
        assert run["run_id"] in httpx.get(f"http://127.0.0.1:{port}/dashboard/rounds", cookies=cookies).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    out = httpx.post(
        f"http://127.0.0.1:{live[1]}/dashboard/logout",
        data={"csrf": csrf.group(1)},
        cookies=cookies,
        headers={"origin": f"http://127.0.0.1:{live[1]}"},
    )
    assert out.status_code == 303
    after = httpx.get(f"http://127.0.0.1:{live[0]}/dashboard/nodes", cookies=cookies)
    assert after.status_code == 303 and after.headers["location"].endswith("/login")

    # the new driver's SuperLink runs on the dead one's database: the run submitted before is there
    state = HubDataDir(r.data_dir).flower
    link = SuperLink(SuperLinkConfig(state, port=loopback_port(state)))
    listed = link.flwr("ls", CONNECTION)["runs"]
    assert run["flower_run_id"] in [int(x["run-id"]) for x in listed]
    # and a stop sent to the replica that does not drive reaches the one that does
    non_driver = next(p for p in live if f":{p}" not in successor.url)
    stopped = r.replica(non_driver).stop_run(run["run_id"])
    assert stopped["status"] == "stopped"
    assert all(r.replica(p).run(run["run_id"])["status"] == "stopped" for p in live)

    print(
        f"\n{REPLICAS} replicas, {EDGES} edges: ready in {ready - began:.1f} s; driver killed with its SuperLink; "
        f"lease moved in {took_over:.1f} s (token {token_before} -> {token_after}); every edge on {new} "
        f"{converged:.1f} s after the kill; {sum(local.values())} counts, all on the hub exactly once; "
        f"connections per replica {dict(r.proxy.connections)}; test {time.monotonic() - began:.1f} s"
    )
