"""The hub's run watcher (hub/rounds.py) against a real run summary: the ServerApp's rounds
(federated.server_app.run_rounds) over the real ClientApp and three edges' local stores,
in process (LocalGrid), so no Flower polling. A fresh ``Rounds`` plays a restarted hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_worker.store import LocalStore
from federated.client_app import app as client_app
from federated.local_grid import LocalGrid
from federated.round_outcome import RunFailed
from federated.server_app import load_base, run_rounds
from hub.archive import pack
from hub.registry import Conflict
from hub.rounds import Rounds
from hub.settings import HubSettings
from hub.state import build_hub
from hub.store import open_store
from models.bundle import DEFAULT_REPOSITORY, verify_bundle
from models.errors import NexusError
from nexus_wire.runconfig import RunConfig
from tests.support.hub import RunningHub
from tests.support.sessions import synthetic_sessions, write_csv

REGIONS = (1, 2, 3)


@pytest.fixture
def hub_rounds(tmp_path: Path) -> Iterator[tuple[Rounds, object]]:
    settings = HubSettings(data_dir=tmp_path / "hub")
    hub = build_hub(settings)
    hub.registry.push(pack(DEFAULT_REPOSITORY / "funnel" / "1"))
    yield Rounds(settings, hub.store, hub.registry), hub
    hub.store.close()


NEXUS_ID = "n-0123456789abcdef"


def _edges(root: Path) -> dict[int, dict[str, str]]:
    configs = {}
    for region in REGIONS:
        store = LocalStore(root / f"edge{region}")
        for session, label in zip(*synthetic_sessions(150, seed=region, region=region)):
            store.add_outcome(session, bool(label))
        store.close()
        configs[region] = {"data-dir": str(root / f"edge{region}"), "region": str(region)}
    configs[REGIONS[0]]["nexus-node"] = NEXUS_ID  # the others play edges that do not say their hub id
    return configs


def _federate(rounds: Rounds, run_id: str, configs: dict[int, dict[str, str]], on_round=None) -> None:
    folder = rounds.run_dir(run_id)
    config = rounds.store.get_run(run_id).config
    settings = RunConfig(
        model="funnel",
        rounds=config["rounds"],
        min_nodes=config["min_nodes"],
        base=str(folder / "base"),
        output_path=str(folder / "final.npz"),
    )
    spec, initial = load_base(settings)
    run_rounds(LocalGrid(client_app, configs), settings, spec, initial, on_round=on_round)


def test_watch_copies_rounds_survives_a_restart_and_registers_a_candidate(hub_rounds, tmp_path: Path) -> None:
    rounds, hub = hub_rounds
    run = rounds.prepare(RunConfig(model="funnel", rounds=2, min_nodes=3))
    assert run.status == "starting" and run.base_version == "1" and run.score_name == "roc_auc"
    seen_mid_run = []

    def after_round(record) -> None:
        if record.round == 1:  # the summary on disk now holds round 1 of 2
            seen_mid_run.append(rounds.watch(rounds.store.get_run(run.run_id)))

    _federate(rounds, run.run_id, _edges(tmp_path), after_round)
    assert seen_mid_run[0].rounds_done == 1 and seen_mid_run[0].status == "starting"
    assert len(rounds.store.list_rounds(run.run_id)) == 1

    # a new hub process, same store and data dir, with an eval file for federated candidates
    eval_csv = write_csv(tmp_path / "eval.csv", *synthetic_sessions(120, seed=99))
    restarted = Rounds(
        rounds.settings.model_copy(update={"eval_data": {"funnel": eval_csv}}), rounds.store, rounds.registry
    )
    restarted.tick()
    done = restarted.store.get_run(run.run_id)
    assert done.status == "finished", done.reason
    assert done.version == "2" and done.rounds_done == 2
    # by hub id where the node said it, else by Flower's (here the LocalGrid's node number)
    assert done.participants == sorted([NEXUS_ID, *(str(r) for r in REGIONS[1:])])

    per_round = restarted.show(run.run_id)["rounds"]
    assert [r["round"] for r in per_round] == [1, 2]
    for r in per_round:
        assert r["participants"] == 3 and 0 < r["loss"] < 5 and 0 <= r["score"] <= 1
        assert r["bytes_in"] > 0 and r["bytes_out"] > 0 and r["duration_s"] >= 0

    shown = hub.registry.show("funnel")
    version = next(v for v in shown["versions"] if v["version"] == "2")
    assert version["stage"] == "candidate" and shown["stable"] is None  # registered, never promoted
    assert version["parent_version"] == "1" and version["key_id"] == hub.key_id
    fed = version["provenance"]["federated"]
    assert (
        fed["run_id"] == run.run_id
        and fed["rounds"] == 2
        and fed["strategy"] == "fedavgm"  # the default
        and fed["participants"] == done.participants
    )
    assert fed["dp"]["enabled"] is False
    assert version["metrics"]["federated_held_out"]["numpy"]["roc_auc"] == per_round[-1]["score"]
    # the promotion gate: in the last round the same nodes scored the base (v1) beside the candidate
    gate = restarted.show(run.run_id)["gate"]
    assert per_round[0]["baseline_score"] is None and 0 <= per_round[-1]["baseline_score"] <= 1
    assert gate == version["gate"] == fed["gate"]
    assert (gate["round"], gate["nodes"], gate["baseline_version"]) == (2, 3, "1")
    assert (gate["candidate"], gate["baseline"]) == (per_round[-1]["score"], per_round[-1]["baseline_score"])
    hub_eval = version["metrics"]["hub_eval"]
    assert set(hub_eval) == {"onnx", "onnx-int8", "tflite"} and all(
        m["n"] == 120 and 0 <= m["roc_auc"] <= 1 for m in hub_eval.values()
    )

    # the registered archive is a complete bundle whose backends agree within the stated tolerance
    out = tmp_path / "candidate"
    out.mkdir()
    from hub.archive import unpack

    unpack(hub.registry.read_archive("funnel", "2"), out)
    manifest = verify_bundle(out).manifest
    measured = manifest["tolerance"]["measured_on_random_inputs"]
    assert measured["onnx-int8"] <= manifest["tolerance"]["max_abs_diff"]["onnx-int8"] and measured["tflite"] <= 1e-5

    # exporting the same run again (a hub killed mid-export) registers nothing new
    from hub.round_export import register_candidate

    again = register_candidate(hub.registry, done, rounds.run_dir(run.run_id), _summary(rounds, run.run_id), eval_csv)
    assert again.version == "2" and [v.version for v in hub.store.list_versions("funnel")] == ["1", "2"]


def test_a_run_with_too_few_trainers_fails_says_why_and_registers_nothing(hub_rounds, tmp_path: Path) -> None:
    rounds, hub = hub_rounds
    run = rounds.prepare(RunConfig(model="funnel", rounds=2, min_nodes=3))
    configs = _edges(tmp_path)
    configs[3]["data-dir"] = str(tmp_path / "no-outcomes")  # an edge whose store holds no labelled rows
    with pytest.raises(RunFailed, match=r"round 1: 2 of 3 node\(s\) trained, fewer than min-nodes 3 \(1 no data\)"):
        _federate(rounds, run.run_id, configs)
    rounds.tick()
    failed = rounds.store.get_run(run.run_id)
    assert failed.status == "failed" and failed.version is None
    assert failed.reason == "round 1: 2 of 3 node(s) trained, fewer than min-nodes 3 (1 no data)"
    [r] = rounds.show(run.run_id)["rounds"]
    assert r["failed"] and r["participants"] == 2 and r["train_failures"] == 1
    # the node's reason, as its error reply said it: no path, no data
    assert r["failures"] == [
        {"node": "3", "step": "train", "kind": "no-data", "reason": "the local store holds no labelled funnel examples"}
    ]
    assert [v.version for v in hub.store.list_versions("funnel")] == ["1"]
    assert not (rounds.run_dir(run.run_id) / "final.npz").exists()


def _finished_run(rounds: Rounds, config: RunConfig, score: float, baseline: float) -> str:
    """A run whose ServerApp finished (the base's weights as the aggregate) with the last round's
    candidate and stable scores as given."""
    from models.export.onnx_graphs import read_initializers

    run = rounds.prepare(config)
    folder = rounds.run_dir(run.run_id)
    with open(folder / "final.npz", "wb") as fh:
        np.savez(fh, **read_initializers(folder / "base" / "model.onnx"))
    last = {"round": 1, "participants": 3, "nodes": ["1", "2", "3"], "eval_nodes": 3, "loss": 0.5}
    summary = {
        "status": "finished",
        "rounds": [{**last, "score": score, "baseline_score": baseline}],
        "participants": ["1", "2", "3"],
    }
    (folder / "final.json").write_text(json.dumps(summary), encoding="utf-8")
    rounds.tick()
    return run.run_id


def test_the_promotion_gate_refuses_a_worse_candidate_and_auto_promotes_only_by_the_margin(hub_rounds) -> None:
    rounds, hub = hub_rounds
    hub.registry.promote("funnel", "1", "stable")  # what each run starts from and is compared with
    auto = RunConfig(model="funnel", rounds=1, min_nodes=3, auto_promote=True, promote_margin=0.01)
    worse = rounds.store.get_run(_finished_run(rounds, auto, score=0.70, baseline=0.75))
    assert worse.status == "finished" and worse.version == "2"
    assert worse.reason == "not auto-promoted: 0.7000 vs v1 0.7500 (-0.0500), needs +0.01"
    with pytest.raises(Conflict, match=r"funnel v2 is worse than v1 .*0.7000 vs 0.7500.*--force"):
        hub.registry.promote("funnel", "2", "stable")
    with pytest.raises(Conflict, match="worse than v1"):
        hub.registry.promote("funnel", "2", "canary", 10)
    assert hub.registry.show("funnel")["stable"] == "1"
    assert hub.registry.promote("funnel", "2", "stable", force=True).version == "2"
    hub.registry.rollback("funnel")  # v1 stable again

    # better, but by less than the margin: registered, not promoted; by the margin: promoted
    slightly = rounds.store.get_run(_finished_run(rounds, auto, score=0.755, baseline=0.75))
    assert slightly.reason.startswith("not auto-promoted: 0.7550 vs v1 0.7500 (+0.0050)")
    assert hub.registry.show("funnel")["stable"] == "1"
    better = rounds.store.get_run(_finished_run(rounds, auto, score=0.80, baseline=0.75))
    assert better.reason == "auto-promoted to stable: 0.8000 vs v1 0.7500 (+0.0500)"
    assert hub.registry.show("funnel")["stable"] == better.version == "4"
    # without --auto-promote nothing is promoted, and a better candidate promotes without --force
    plain = rounds.store.get_run(_finished_run(rounds, RunConfig(model="funnel", rounds=1), score=0.9, baseline=0.8))
    assert plain.base_version == "4" and plain.reason is None and hub.registry.show("funnel")["stable"] == "4"
    assert hub.registry.promote("funnel", plain.version, "stable").version == "5"


def _summary(rounds: Rounds, run_id: str) -> dict:
    from hub.rounds import read_summary

    return read_summary(rounds.run_dir(run_id) / "final.json")


def test_a_run_past_its_deadline_fails_with_the_reason(hub_rounds) -> None:
    rounds, _ = hub_rounds
    now = [1000.0]
    rounds.clock = lambda: now[0]
    run = rounds.prepare(RunConfig(model="funnel", rounds=2, min_nodes=3, deadline_s=60))
    rounds.tick()
    assert rounds.store.get_run(run.run_id).status == "starting"
    now[0] += 61
    rounds.tick()
    failed = rounds.store.get_run(run.run_id)
    assert failed.status == "failed" and "deadline of 60s passed after 0/2 rounds" in failed.reason
    with pytest.raises(NexusError, match="already ended"):
        rounds.stop(run.run_id)


def test_stop_and_rounds_off(hub_rounds) -> None:
    rounds, _ = hub_rounds
    run = rounds.prepare(RunConfig(model="funnel", rounds=1))
    stopped = rounds.stop(run.run_id)
    assert stopped.status == "stopped" and stopped.reason == "stopped by the operator"
    assert [r["run_id"] for r in rounds.list()] == [run.run_id]
    with pytest.raises(NexusError, match="rounds are off"):
        rounds.start(RunConfig(model="funnel"))
    with pytest.raises(NexusError, match="no emotion version"):
        rounds.prepare(RunConfig(model="emotion"))


def test_an_emotion_run_exports_a_checked_candidate(tmp_path: Path) -> None:
    from hub.round_export import register_candidate
    from models.export.onnx_graphs import read_initializers

    settings = HubSettings(data_dir=tmp_path / "hub")
    hub = build_hub(settings)
    try:
        hub.registry.push(pack(DEFAULT_REPOSITORY / "emotion" / "1"))
        rounds = Rounds(settings, hub.store, hub.registry)
        run = rounds.prepare(RunConfig(model="emotion", rounds=1))
        folder = rounds.run_dir(run.run_id)
        weights = read_initializers(folder / "base" / "model.onnx")
        weights["dense_b"] = weights["dense_b"] + 0.01  # stands in for the aggregate
        with open(folder / "final.npz", "wb") as fh:
            np.savez(fh, **weights)
        summary = {"rounds": [{"round": 1, "loss": 0.3, "score": 0.5, "eval_nodes": 2}], "participants": [11, 12]}
        record = register_candidate(hub.registry, run, folder, summary, None)
        manifest = record.manifest
        assert record.version == "2" and manifest["parent_version"] == "1" and manifest["family"] == "emotion"
        assert manifest["provenance"]["federated"]["participants"] == ["11", "12"]  # a summary of Flower ids reads
        assert manifest["thresholds"] == hub.store.get_version("emotion", "1").manifest["thresholds"]
        assert manifest["metrics"]["federated_held_out"]["numpy"]["macro_f1"] == 0.5
        measured = manifest["tolerance"]["measured_on_random_inputs"]
        assert all(measured[b] <= manifest["tolerance"]["max_abs_diff"][b] for b in ("onnx-int8", "tflite"))
    finally:
        hub.store.close()


def test_rounds_http_api_without_a_superlink(tmp_path: Path) -> None:
    running = RunningHub(tmp_path / "hub", open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}"))
    try:
        assert running.http.get("/v1/hub").json()["superlink"] is None
        assert running.http.get("/v1/rounds").status_code == 401
        auth = {"Authorization": f"Bearer {(tmp_path / 'hub' / 'admin.token').read_text().strip()}"}
        assert running.http.get("/v1/rounds", headers=auth).json() == {"runs": []}
        answer = running.http.post("/v1/rounds", json={"model": "funnel", "rounds": 2}, headers=auth)
        assert answer.status_code == 409 and "rounds are off" in answer.json()["error"]
        bad = running.http.post("/v1/rounds", json={"model": "funnel", "rounds": 0}, headers=auth)
        assert bad.status_code == 422 and bad.json()["error"].startswith("rounds:")
        assert running.http.post("/v1/rounds", json={"model": "funnel", "bogus": 1}, headers=auth).status_code == 422
        assert running.http.get("/v1/rounds/r-404", headers=auth).status_code == 404
        assert running.http.post("/v1/rounds/r-404/stop", headers=auth).status_code == 404
    finally:
        running.stop()
        running.store.close()
