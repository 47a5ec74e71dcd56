"""Real Flower processes on loopback: a SuperLink with its app guard (hub/superlink.py) and
SuperNodes with theirs (edge_worker/supernode.py), each node with its own local store of one
region's sessions, and ``flwr run`` of the federated app, which the hub's key signed. Flower
polls every ~3 s, so rounds are few."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_worker.audit import SEND, AuditReader, verify
from edge_worker.audit.report import build_report
from edge_worker.store import LocalStore
from edge_worker.supernode import SuperNode, SuperNodeConfig
from hub.apps import write_signed_apps
from hub.superlink import SuperLink, SuperLinkConfig, flower_app_dir, server_app_guard
from hub.superlink_keeper import SuperLinkKeeper
from nexus_service.keyfiles import load_or_create_key
from nexus_tools.processes import free_port
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.runconfig import RunConfig
from tests.support.env import need
from tests.support.federated import flower_finished, funnel_spec, trust_hub_apps
from tests.support.sessions import synthetic_sessions

BIN = Path(__import__("sys").executable).parent


def nexus_id(region: int) -> str:
    """The id the hub would have assigned the region's edge at enrollment."""
    return f"n-{region:016x}"


class Cluster:
    def __init__(self, root: Path, regions: list[int]) -> None:
        self.root = root
        sessions = []
        for region in regions:
            rows, labels = synthetic_sessions(200, seed=region, region=region)
            store = LocalStore(root / f"edge{region}")
            for session, label in zip(rows, labels):
                store.add_outcome(session, bool(label))
            store.close()
            sessions += rows
        # the model spec plays the part of the base bundle the hub would start from
        self.spec_path = root / "spec.json"
        self.spec_path.write_text(funnel_spec(sessions).to_json())
        (root / "hub").mkdir()
        key_file = root / "hub" / "hub-signing-key.pem"
        key = load_or_create_key(key_file)
        self.link = SuperLink(SuperLinkConfig(root / "hub", port=free_port(), receipt_key=key_file))
        self.keeper = SuperLinkKeeper(self.link, server_app_guard(self.link))
        apps = trust_hub_apps(root / f"edge{regions[0]}", key)
        write_signed_apps(self.link.layout.trusted_apps, apps)
        for region in regions[1:]:
            trust_hub_apps(root / f"edge{region}", key, apps)
        self.nodes = {
            region: SuperNode(
                SuperNodeConfig(
                    self.link.config.address,
                    root / f"edge{region}",
                    port=free_port(),
                    tags={"region": str(region)},
                    nexus_node=nexus_id(region),
                )
            )
            for region in regions
        }

    def start(self) -> None:
        self.keeper.open()
        for node in self.nodes.values():
            node.start(ready_timeout=60)
        # a run samples the nodes online when it starts: wait until every node registered
        deadline = time.monotonic() + 60
        while len(self.link.online_nodes()) < len(self.nodes):
            assert time.monotonic() < deadline, "SuperNodes did not all register"
            time.sleep(1)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.keeper.close()

    def wait_finished(self, run_id: int, timeout: float) -> str:
        return flower_finished(self.link, run_id, timeout, f"logs in {self.root}")


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[type]:
    need(
        (BIN / "flower-superlink").exists() and (BIN / "flower-supernode").exists(),
        "Flower's binaries are not installed in this environment",
    )
    started: list[Cluster] = []

    def make(regions: list[int]) -> Cluster:
        cluster = Cluster(tmp_path, regions)
        started.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


def _summary(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {"rounds": []}


def test_two_rounds_on_real_supernodes(cluster_factory, tmp_path: Path) -> None:
    assert (flower_app_dir() / "pyproject.toml").exists()  # the app ships inside the federated package
    cluster = cluster_factory([1, 2])
    out = tmp_path / "out" / "final.npz"
    run_id = cluster.link.submit(
        RunConfig(rounds=2, min_nodes=2, timeout_s=60.0, base=str(cluster.spec_path), output_path=str(out), lr=0.01)
    )
    assert cluster.wait_finished(run_id, timeout=240) == "finished:completed"

    summary = _summary(out)
    assert summary["status"] == "finished" and summary["model"] == "funnel" and summary["strategy"] == "fedavgm"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        assert r["participants"] == 2 and r["eval_nodes"] == 2 and r["rejected"] == []
        assert 0 < r["loss"] < 5 and 0 <= r["score"] <= 1
        assert r["bytes_in"] > 0 and r["bytes_out"] > r["bytes_in"]
    # by the ids the hub assigned (the nodes' ``nexus-node``), not by the SuperLink's
    assert summary["participants"] == [nexus_id(1), nexus_id(2)]
    assert all(r["nodes"] == summary["participants"] for r in summary["rounds"])
    with np.load(out) as arrays:
        assert set(arrays.files) == {"w0", "b0", "w1", "b1"}
        assert arrays["w0"].shape == (summary["model_spec"]["featurizer"]["n_features"], 8)
        assert all(np.all(np.isfinite(arrays[k])) for k in arrays.files)


@pytest.mark.slow
def test_a_killed_node_does_not_stall_the_round(cluster_factory, tmp_path: Path) -> None:
    cluster = cluster_factory([1, 2, 3])
    out = tmp_path / "out" / "final.npz"
    timeout = 20.0
    run_id = cluster.link.submit(
        RunConfig(rounds=2, min_nodes=2, timeout_s=timeout, base=str(cluster.spec_path), output_path=str(out))
    )
    deadline = time.monotonic() + 180
    while not _summary(out)["rounds"]:
        assert time.monotonic() < deadline, "round 1 never finished"
        time.sleep(1)
    assert _summary(out)["rounds"][0]["participants"] == 3
    cluster.nodes[3].stop(kill=True)  # SIGKILL: the SuperLink notices only after ~50 s of missed heartbeats

    assert cluster.wait_finished(run_id, timeout=180) == "finished:completed"
    last = _summary(out)["rounds"][1]
    assert last["participants"] == 2 and last["eval_nodes"] == 2
    # the train and evaluate steps each waited at most the reply timeout for the dead node
    assert last["duration_s"] < 2 * timeout + 30


def _sent_replies(edge_dir: Path) -> int:
    """Replies the SuperNode has delivered to the SuperLink (Flower logs each one it pushed)."""
    log = EdgeDataDir(edge_dir).supernode_log
    return log.read_text(errors="replace").count("Sent successfully") if log.exists() else 0


@pytest.mark.slow
def test_secure_aggregation_survives_a_node_killed_mid_round(cluster_factory, tmp_path: Path) -> None:
    """SecAgg+ on four real SuperNodes; one is SIGKILLed once its encrypted key shares reached the
    SuperLink, so the others masked their updates against it and the hub must rebuild its masks
    from their shares (threshold 3 of 4) to unmask the sum."""
    cluster = cluster_factory([1, 2, 3, 4])
    out = tmp_path / "out" / "final.npz"
    settings = RunConfig(
        rounds=1, min_nodes=3, timeout_s=15.0, base=str(cluster.spec_path), output_path=str(out), lr=0.01
    )
    started = time.monotonic()
    run_id = cluster.link.submit(settings.model_copy(update={"secure_aggregation": True}))
    victim = tmp_path / "edge4"
    deadline = time.monotonic() + 120
    # its node-config, public-keys and key-shares replies delivered: 3 (the audit entry comes first)
    while not (
        any(e.kind == "secagg-key-shares" for e in AuditReader(victim).entries(SEND)) and _sent_replies(victim) >= 3
    ):
        assert time.monotonic() < deadline, f"node 4 never shared its keys; logs in {tmp_path}"
        time.sleep(0.02)
    cluster.nodes[4].stop(kill=True)

    assert cluster.wait_finished(run_id, timeout=240) == "finished:completed"
    elapsed = time.monotonic() - started
    [r] = _summary(out)["rounds"]
    protocol = r["secure_aggregation"]
    assert r["participants"] == 3 and r["nodes"] == [nexus_id(n) for n in (1, 2, 3)] and r["train_failures"] == 1
    assert protocol["summed"] == r["nodes"] and protocol["sampled"] == [nexus_id(n) for n in (1, 2, 3, 4)]
    assert [(d["node"], d["stage"]) for d in protocol["dropped"]] == [(nexus_id(4), "collect_masked_vectors")]
    with np.load(out) as arrays:
        assert all(np.all(np.isfinite(arrays[k])) for k in arrays.files)
    assert "masked-update" not in [e.kind for e in AuditReader(victim).entries(SEND)]
    for region in (1, 2, 3):
        edge = tmp_path / f"edge{region}"
        kinds = [e.kind for e in AuditReader(edge).entries(SEND)]
        assert kinds.count("masked-update") == 1 and "model-update" not in kinds
        assert verify(edge).ok and build_report(edge)["secure_aggregation"]["used"]
    print(f"secure round with a node killed: {elapsed:.1f}s, stages {protocol['stage_s']}")
