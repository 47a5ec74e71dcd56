"""``nexus bench hub`` runs end to end (tiny sizes; the real figures come from the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_cli import main
from nexus_tools.bench_fleet import problems
from nexus_tools.bench_hub import _HubProcess
from tests.support.env import need, port_open


@pytest.mark.slow
def test_bench_hub_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "hub", "--json", "--nodes", "6", "--edges", "2", "--seconds", "0.5", "--redis", ""]) == 0
    result = json.loads(capsys.readouterr().out)
    sqlite = result["stores"]["sqlite"]
    assert set(result["stores"]) == {"sqlite"}
    assert sqlite["heartbeats_per_s"] > 0 and sqlite["heartbeat_errors"] == 0
    assert 0 < sqlite["rollout_all_edges_s"] < 30


def test_the_bench_starts_its_hub_from_a_folder_holding_another_hub_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # launched from a folder with a `hub/` of its own (a checkout, a data dir): the child must
    # import this code's hub, not that one
    shadow = tmp_path / "cwd" / "hub"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("the hub package of the working directory")\n')
    monkeypatch.chdir(shadow.parent)
    hub = _HubProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    try:
        assert hub.admin.create_token({})["token"]
    finally:
        hub.stop()


@pytest.mark.slow
def test_bench_hub_fleet_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny fleet on 1 replica: the report keeps offered, sent and answered apart, the rollout
    runs until every node has the new version, and the exit status says whether it is valid."""
    need(port_open("127.0.0.1", 6379), "no Redis server on 127.0.0.1:6379")
    argv = ["bench", "hub", "--fleet", "--json", "--nodes", "60", "--replicas", "1", "--rates", "60", "--seconds", "2"]
    status = main([*argv, "--redis", "redis://127.0.0.1:6379/15"])
    result = json.loads(capsys.readouterr().out)
    assert status == (0 if result["valid"] else 2)
    assert result["valid"] == (not result["problems"])
    run = result["replicas"]["1"]
    assert run["prime"] == {"polls": 60, "errors": 0, "seconds": run["prime"]["seconds"]}
    for step in run["steps"]:
        assert {"offered_rps", "sent_rps", "achieved_rps", "unanswered", "generator_lag_p99_ms"} <= step.keys()
        assert step["errors"] == 0 and step["broken_connections"] == 0
    rollout = run["rollout"]
    assert rollout["nodes_reached"] == 60 and rollout["wall"]["all_s"] is not None
    assert rollout["fleet_time"]["all_s"] <= 3 * 10.0  # one poll interval plus the hub's lag, in the fleet's time
    assert run["replica_rss_mb"]["after_traffic"][0] > 0


def test_a_fleet_run_is_invalid_when_the_generator_set_the_pace_or_a_node_was_missed() -> None:
    step = {"offered_rps": 500.0, "kept_up": True, "generator_bound": False, "generator_lag_p99_ms": 3.0}
    run = {"sustained_rps": 480.0, "steps": [step], "rollout": {"wall": {"all_s": 70.0}, "nodes_reached": 10}}
    result = {"nodes": 10, "generator_echo_rps": 5000.0, "replicas": {"1": run}}
    assert problems(result) == []
    run["steps"] = [{**step, "generator_bound": True, "generator_lag_p99_ms": 400.0}]
    run["rollout"] = {"wall": {"all_s": None}, "nodes_reached": 7}
    found = problems(result)
    assert len(found) == 2 and "generator set the pace" in found[0] and "7 of 10" in found[1]
    run["sustained_rps"], run["steps"] = None, [{**step, "kept_up": False}]
    assert "no step kept up" in problems(result)[0]
