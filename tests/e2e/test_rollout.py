"""The issue's rollout scenario with real processes on 127.0.0.1: ``nexus hub serve`` and
three ``nexus edge serve`` (region=1..3) serving the funnel model.

A new version assigned to region=2 reaches that edge within ROLLOUT_BUDGET_S and no
other; a rollback returns it to the previous version; a restarted edge keeps its node
identity and serves the hub's version again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.client import OperatorClient
from hub.store import open_store
from models.bundle import read_manifest
from nexus_service.keyfiles import load_signing_key
from nexus_tools.processes import free_port
from nexus_wire.datadir import HubDataDir
from tests.support.hub import store_forged
from tests.support.processes import EdgeProcess, HubProcess, wait_for
from tests.support.replicas import funnel_bundles

POLL_S = 0.5
#: hub poll interval 0.5 s; the budget covers a download, verification and a model load on a busy 2-core box
ROLLOUT_BUDGET_S = 20.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[HubProcess, OperatorClient, list[EdgeProcess], tuple[Path, Path]]]:
    bundles = funnel_bundles(tmp_path)
    hub = HubProcess(tmp_path / "hub", free_port(), "--no-superlink", "--poll-interval", str(POLL_S))
    admin = OperatorClient(hub.url, (tmp_path / "hub" / "admin.token").read_text().strip())
    edges: list[EdgeProcess] = []
    try:
        old = admin.push(bundles[0])
        admin.promote("funnel", old["version"], "stable")
        for region in (1, 2, 3):
            token = admin.create_token({"region": str(region)})["token"]
            edges.append(EdgeProcess(tmp_path / f"edge-{region}", hub.url, token))
        yield hub, admin, edges, bundles
    finally:
        for edge in edges:
            edge.stop()
        admin.close()
        hub.stop()


@pytest.mark.slow
def test_assign_to_one_region_then_rollback_then_restart(cluster) -> None:
    hub, admin, edges, (old_dir, new_dir) = cluster
    old = read_manifest(old_dir)["version"]
    wait_for(lambda: all(e.served() == old for e in edges), timeout=60, what="edges serving the stable version")
    assert sorted(n["tags"]["region"] for n in admin.nodes()) == ["1", "2", "3"]

    new = admin.push(new_dir)["version"]
    start = time.monotonic()
    admin.assign("funnel", new, {"region": "2"})
    wait_for(lambda: edges[1].served() == new, timeout=ROLLOUT_BUDGET_S, what=f"region 2 serving {new}")
    reached = time.monotonic() - start
    time.sleep(3 * POLL_S)  # the others had several polls to (wrongly) pick it up
    assert [e.served() for e in edges] == [old, new, old]
    assert not (edges[0].root / "models" / "funnel" / new).exists()
    print(f"version {new} reached the region=2 edge in {reached:.2f} s")

    admin.rollback("funnel")
    wait_for(lambda: edges[1].served() == old, timeout=ROLLOUT_BUDGET_S, what="rollback on region 2")
    assert [e.served() for e in edges] == [old, old, old]
    assert edges[1].metric("nexus_edge_hub_bundles_installed_total") >= 1

    # a bundle with one flipped byte in the hub's storage: region 3 refuses it, visibly
    store = open_store(f"sqlite:///{hub.data_dir / 'hub.sqlite3'}")
    key = load_signing_key(HubDataDir(hub.data_dir).signing_key)
    store_forged(store, hub.data_dir, edges[2].root, "90", key, flip=True)
    store.close()
    admin.assign("funnel", "90", {"region": "3"})
    wait_for(
        lambda: edges[2].metric("nexus_edge_hub_bundles_refused_total") == 1,
        timeout=ROLLOUT_BUDGET_S,
        what="refusal in metrics",
    )
    assert edges[2].served() == old and not (edges[2].root / "models" / "funnel" / "90").exists()
    admin.rollback("funnel")

    node_ids = {n["node_id"] for n in admin.nodes()}
    edges[1].stop()
    edges[1].start(token=None)  # no token: it must come back as the same node
    wait_for(lambda: edges[1].served() == old, timeout=60, what="restarted edge serving")
    wait_for(lambda: any(n["status"] == "online" for n in admin.nodes()), what="heartbeat")
    assert {n["node_id"] for n in admin.nodes()} == node_ids

    # secrets never reach a log: the admin token, nor any node's secret
    secrets = [(hub.data_dir / "admin.token").read_text().strip()]
    secrets += [json.loads((e.root / "data" / "hub-identity.json").read_text())["node_secret"] for e in edges]
    logs = hub.log.read_text() + "".join((e.root / "edge.log").read_text() for e in edges)
    assert not [s for s in secrets if s in logs]
