"""The Redis store on a Redis Cluster node: every script and transaction keeps its keys in one
slot (hash tags, hub/store/redis.py), or the node refuses it with CROSSSLOT.

One ``redis-server --cluster-enabled yes`` holding all 16,384 slots is a cluster of one: it
checks slots exactly as a node of a bigger cluster does (a command whose keys hash to two slots
is refused even though this node serves both), so the store's plain client can talk to it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from hub.funnel_config import Experiment, Funnel, Status, Variant
from hub.lease import ROUNDS_LEASE
from hub.store import open_store
from hub.store.base import Fence, NodeRecord, RunRecord
from hub.store.redis import RedisStore
from nexus_tools.processes import free_port
from tests.support.env import need


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    need(server is not None, "redis-server is not installed (apt-get install redis-server)")
    assert server is not None
    root: Path = tmp_path_factory.mktemp("cluster")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--dir", str(root),
            "--cluster-config-file", str(root / "nodes.conf"), "--save", "", "--appendonly", "no"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def store(cluster_url: str) -> Iterator[RedisStore]:
    opened = open_store(f"{cluster_url}?prefix=test:{uuid.uuid4().hex[:8]}:")
    assert isinstance(opened, RedisStore)
    yield opened
    opened.delete_all()
    opened.close()


def test_the_node_refuses_keys_of_two_slots(store: RedisStore) -> None:
    """The premise: this one node checks slots as a cluster does."""
    with pytest.raises(redis.ResponseError, match="same slot"):
        store.r.eval("return redis.call('MSET', KEYS[1], 1, KEYS[2], 1)", 2, "a", "b")


def test_the_rounds_lease_and_its_fenced_writes_stay_in_one_slot(store: RedisStore) -> None:
    token = store.acquire_lease(ROUNDS_LEASE, "a", 5.0)
    assert token is not None
    run = RunRecord("r-1", "funnel", "running", {"rounds": 1}, "1", 1.0, 1.0, 100.0)
    assert store.put_run_fenced(run, Fence(ROUNDS_LEASE, token))
    assert store.put_round_fenced("r-1", 1, {"round": 1}, Fence(ROUNDS_LEASE, token))
    assert store.renew_lease(ROUNDS_LEASE, "a", token, 5.0)
    lease = store.get_lease(ROUNDS_LEASE)
    assert lease is not None and lease.token == token
    assert store.release_lease(ROUNDS_LEASE, "a", token)
    newer = store.acquire_lease(ROUNDS_LEASE, "b", 5.0, replace="a")
    assert newer is not None and newer > token
    assert not store.put_run_fenced(replace(run, status="failed"), Fence(ROUNDS_LEASE, token))
    stored = store.get_run("r-1")
    assert stored is not None and stored.status == "running" and store.list_rounds("r-1") == [{"round": 1}]
    assert store.spend_rate_token("auth", "10.0.0.1", 5, 1.0) == 4.0


def test_nodes_experiments_and_counters_stay_in_one_slot(store: RedisStore) -> None:
    store.add_node(NodeRecord("n-1", "s1", {"region": "1"}, 1.0))

    async def node_calls() -> tuple[str, str]:
        try:
            check = await store.check_node("n-1", "s1")
            beat = await store.heartbeat_node("n-1", "s1", 2.0, lambda previous: ({"health": "ok"}, 1))
            return check.status, beat[0]
        finally:
            await store.aclose()

    assert asyncio.run(node_calls()) == ("ok", "ok")
    store.record_heartbeat("n-1", 3.0, {"health": "ok"})
    assert store.add_funnel(Funnel("f", ("view", "buy")))
    experiment = Experiment("e", "f", (Variant("a", 1.0), Variant("b", 1.0)), "buy", salt="s")
    assert store.add_experiment(experiment, 1.0)
    assert store.update_experiment(replace(experiment, status=Status.RUNNING, version=2), 2.0) == "ok"
    store.merge_counters("n-1", {("e", "a", "view"): 3, ("e", "b", "buy"): 1})
    assert store.counter_state("e")[("e", "a", "view")] == {"n-1": 3}
    assert store.claim_meta("k", "v") == "v" and store.swap_meta("k", "v", "w")
    action = store.add_action("funnel", "promote", "1", {}, 100, 1.0)
    assert store.deactivate_action("funnel", action.action_id)
    revoked = store.revoke_node("n-1", 4.0)
    assert revoked is not None and revoked.revoked_at == 4.0
