"""Funnel config, experiments and G-counters on both hub stores, and the hub's funnel HTTP API."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.client import FunnelClient, HubError
from hub.counters import NodeReport, apply_reports
from hub.funnel_config import Allocation, Experiment, Funnel, Status, Variant
from hub.store.base import Store
from nexus_cli import main
from nexus_wire.assignment import ASSIGNED
from tests.support.env import need
from tests.support.hub import RunningHub, enroll_node

FUNNEL = Funnel("shop", ("view", "cart", "buy"))
_ids = itertools.count()
pytestmark = pytest.mark.hub_settings(thompson_interval_s=0.2, results_min_group_size=5)


def experiment(
    eid: str = "checkout-test", funnel: str = "shop", allocation: Allocation = Allocation.FIXED
) -> Experiment:
    return Experiment(eid, funnel, (Variant("A", 1.0), Variant("B", 1.0)), "buy", allocation=allocation)


# -- store: config ---------------------------------------------------------------------------


def test_funnels_are_created_once(any_store: Store) -> None:
    assert any_store.add_funnel(FUNNEL)
    assert not any_store.add_funnel(Funnel("shop", ("other",)))
    assert any_store.add_funnel(Funnel("leads", ("visit", "form")))
    assert any_store.get_funnel("shop") == FUNNEL
    assert any_store.get_funnel("nope") is None
    assert [f.id for f in any_store.list_funnels()] == ["leads", "shop"]


def test_experiment_versions_compare_and_set_and_keep_history(any_store: Store) -> None:
    e1 = experiment()
    assert any_store.add_experiment(e1, at=1.0)
    assert not any_store.add_experiment(e1, at=2.0)
    e2 = e1.with_status(Status.RUNNING)
    assert any_store.update_experiment(e2, at=2.0) == "ok"
    assert any_store.update_experiment(e2, at=3.0) == "stale"  # a second writer of the same version loses
    e3 = e2.with_weights({"A": 0.2, "B": 0.8})
    assert any_store.update_experiment(e3, at=3.0) == "ok"
    record = any_store.get_experiment("checkout-test")
    assert record is not None and record.experiment == e3 and record.at == 3.0
    history = any_store.experiment_history("checkout-test")
    assert [(r.experiment.version, r.experiment.status, r.at) for r in history] == [
        (1, "draft", 1.0),
        (2, "running", 2.0),
        (3, "running", 3.0),
    ]
    assert history[-1].experiment.weights == {"A": 0.2, "B": 0.8}
    assert [r.experiment for r in any_store.list_experiments()] == [e3]
    assert any_store.get_experiment("nope") is None


def test_at_most_one_running_experiment_per_funnel(any_store: Store) -> None:
    first, second, other = experiment("first"), experiment("second"), experiment("other", funnel="leads")
    for e in (first, second, other):
        assert any_store.add_experiment(e, at=0.0)
    assert any_store.update_experiment(first.with_status("running"), at=1.0) == "ok"
    assert any_store.update_experiment(second.with_status("running"), at=1.0) == "busy"
    assert any_store.update_experiment(other.with_status("running"), at=1.0) == "ok"  # another funnel
    assert any_store.update_experiment(first.with_status("running").with_status("stopped"), at=2.0) == "ok"
    assert any_store.update_experiment(second.with_status("running"), at=3.0) == "ok"


def test_one_of_racing_starts_wins(any_store: Store) -> None:
    candidates = [experiment(f"race-{i}") for i in range(6)]
    for e in candidates:
        any_store.add_experiment(e, at=0.0)
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda e=e: outcomes.append(any_store.update_experiment(e.with_status("running"), 1.0)))
        for e in candidates
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["busy"] * 5 + ["ok"]


# -- store: counters -------------------------------------------------------------------------

KEYS = [(variant, step) for variant in ("A", "B") for step in (ASSIGNED, "view", "buy")]
reports = st.lists(
    st.builds(
        lambda node, counts: (node, counts),
        st.sampled_from(["n-1", "n-2", "n-3"]),
        st.dictionaries(st.sampled_from(KEYS), st.integers(0, 50), max_size=len(KEYS)),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=reports)
def test_store_merge_equals_apply_reports(
    any_store: Store, sequence: list[tuple[str, dict[tuple[str, str], int]]]
) -> None:
    """Any sequence of reports (duplicates, stale ones, any order) ends where hub.counters says."""
    eid = f"prop-{next(_ids)}"  # a fresh experiment per example: the store is shared by all examples
    node_reports = [NodeReport(node, {(eid, v, s): c for (v, s), c in counts.items()}) for node, counts in sequence]
    for report in node_reports:
        any_store.merge_counters(report.node_id, report.counts)
    assert any_store.counter_state(eid) == apply_reports({}, node_reports)


def test_counters_of_experiments_are_separate_and_merge_is_per_node_max(any_store: Store) -> None:
    any_store.merge_counters("n-1", {("e1", "A", ASSIGNED): 5, ("e2", "A", ASSIGNED): 7})
    any_store.merge_counters("n-1", {("e1", "A", ASSIGNED): 3})  # late and stale: ignored
    any_store.merge_counters("n-2", {("e1", "A", ASSIGNED): 2})
    assert any_store.counter_state("e1") == {("e1", "A", ASSIGNED): {"n-1": 5, "n-2": 2}}
    assert any_store.counter_state("e2") == {("e2", "A", ASSIGNED): {"n-1": 7}}
    assert any_store.counter_state("none") == {}


# -- HTTP API ------------------------------------------------------------------------------


def operator(hub: RunningHub) -> FunnelClient:
    return FunnelClient(hub.url, (hub.data_dir / "admin.token").read_text().strip())


def report(node_id: str, counts: dict[tuple[str, str, str], int]) -> dict:
    return {
        "node_id": node_id,
        "counts": [{"experiment": e, "variant": v, "step": s, "count": c} for (e, v, s), c in counts.items()],
    }


def define(client: FunnelClient, allocation: str = "fixed", eid: str = "checkout-test") -> dict:
    client.create_funnel("shop", ["view", "cart", "buy"])
    return client.create_experiment(
        {
            "id": eid,
            "funnel_id": "shop",
            "variants": [{"name": "A"}, {"name": "B"}],
            "decision_step": "buy",
            "allocation": allocation,
        }
    )


def test_operator_flow_and_one_running_experiment_per_funnel(hub: RunningHub) -> None:
    with operator(hub) as client:
        created = define(client)
        assert created["status"] == "draft" and created["version"] == 1 and created["control"] == "A"
        client.create_experiment(
            {"id": "second", "funnel_id": "shop", "variants": [{"name": "A"}, {"name": "C"}], "decision_step": "cart"}
        )
        assert client.start("checkout-test")["status"] == "running"
        with pytest.raises(HubError) as busy:
            client.start("second")
        assert busy.value.status == 409
        for bad, status in (
            (lambda: client.create_funnel("shop", ["x"]), 409),
            (lambda: client.experiment("nope"), 404),
            (
                lambda: client.create_experiment(
                    {"id": "x", "funnel_id": "nope", "variants": [{"name": "A"}, {"name": "B"}], "decision_step": "buy"}
                ),
                404,
            ),
            (
                lambda: client.create_experiment(
                    {"id": "x", "funnel_id": "shop", "variants": [{"name": "A"}, {"name": "B"}], "decision_step": "pay"}
                ),
                400,
            ),
            (lambda: client.create_funnel("bad:id", ["x"]), 400),
        ):
            with pytest.raises(HubError) as err:
                bad()
            assert err.value.status == status
        assert client.stop("checkout-test")["status"] == "stopped"
        with pytest.raises(HubError) as again:
            client.start("checkout-test")  # stopped is final
        assert again.value.status == 409
        assert client.start("second")["status"] == "running"
        shown = client.funnel("shop")
        assert shown["steps"] == ["view", "cart", "buy"] and {e["id"] for e in shown["experiments"]} == {
            "checkout-test",
            "second",
        }
        assert [h["status"] for h in client.history("checkout-test")] == ["draft", "running", "stopped"]
    assert hub.http.get("/v1/experiments").status_code == 401
    _, node = enroll_node(hub)
    assert hub.http.get("/v1/experiments", headers=node).status_code == 403


def test_config_etag_and_counter_reports(hub: RunningHub) -> None:
    node_id, node = enroll_node(hub)
    other_id, _ = enroll_node(hub)
    with operator(hub) as client:
        define(client)
        first = hub.http.get("/v1/nodes/me/funnel-config", headers=node)
        assert first.status_code == 200 and first.json()["experiments"] == []  # drafts stay on the hub
        assert (
            hub.http.get(
                "/v1/nodes/me/funnel-config", headers={**node, "If-None-Match": first.headers["etag"]}
            ).status_code
            == 304
        )
        key = ("checkout-test", "A", "$assigned")
        assert (
            hub.http.post("/v1/nodes/me/counters", headers=node, json=report(node_id, {key: 3})).status_code == 422
        )  # draft
        client.start("checkout-test")
        second = hub.http.get("/v1/nodes/me/funnel-config", headers={**node, "If-None-Match": first.headers["etag"]})
        assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
        assert second.json()["experiments"][0]["status"] == "running"
        counts = {
            key: 30,
            ("checkout-test", "A", "cart"): 3,
            ("checkout-test", "A", "buy"): 6,
            ("checkout-test", "B", "$assigned"): 30,
            ("checkout-test", "B", "buy"): 12,
        }
        for _ in range(2):  # a retry of the same report changes nothing
            assert hub.http.post("/v1/nodes/me/counters", headers=node, json=report(node_id, counts)).json() == {
                "merged": 5
            }
        assert (
            hub.http.post("/v1/nodes/me/counters", headers=node, json=report(node_id, {key: 1})).status_code == 200
        )  # stale
        assert hub.http.post("/v1/nodes/me/counters", headers=node, json=report(other_id, counts)).status_code == 403
        assert (
            hub.http.post(
                "/v1/nodes/me/counters", headers=node, json=report(node_id, {("checkout-test", "Z", "buy"): 1})
            ).status_code
            == 422
        )
        assert (
            hub.http.post(
                "/v1/nodes/me/counters", headers=node, json={"node_id": node_id, "counts": [{"experiment": "x"}]}
            ).status_code
            == 422
        )
        results = client.results("checkout-test")
    a, b = results["variants"]
    assert (a["assigned"], b["assigned"]) == (30, 30)
    buy = {s["step"]: s for s in b["steps"]}["buy"]
    assert buy["reached"] == 12 and buy["rate"] == pytest.approx(0.4) and 0.5 < buy["prob_beat_control"] < 1
    steps_a = {s["step"]: s for s in a["steps"]}
    assert steps_a["cart"]["reached"] is None and steps_a["cart"]["rate"] is None  # 3 < min group size 5: withheld
    assert steps_a["view"]["reached"] == 0 and steps_a["buy"]["reached"] == 6
    assert results["srm"]["mismatch"] is False and results["min_group_size"] == 5


def test_thompson_weights_are_published_on_the_cadence(hub: RunningHub) -> None:
    node_id, node = enroll_node(hub)
    with operator(hub) as client:
        define(client, allocation="thompson")
        client.start("checkout-test")
        counts = {
            ("checkout-test", "A", "$assigned"): 500,
            ("checkout-test", "A", "buy"): 50,
            ("checkout-test", "B", "$assigned"): 500,
            ("checkout-test", "B", "buy"): 90,
        }
        hub.http.post("/v1/nodes/me/counters", headers=node, json=report(node_id, counts)).raise_for_status()
        deadline = time.monotonic() + 10
        while client.experiment("checkout-test")["version"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        shares = {v["name"]: v["share"] for v in client.experiment("checkout-test")["variants"]}
        history = client.history("checkout-test")
    assert shares["B"] > 0.9 and shares["A"] >= 0.05
    assert [h["status"] for h in history][:2] == ["draft", "running"] and history[-1]["weights"] == pytest.approx(
        shares
    )
    # unchanged counts: no new version every cadence
    time.sleep(0.6)
    with operator(hub) as client:
        assert len(client.history("checkout-test")) == len(history)


def test_cli_funnels_and_experiments(hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--hub", hub.url, "--data-dir", str(hub.data_dir)]
    assert main(["hub", "funnels", "create", "shop", "--steps", "view,cart,buy", *base, "--json"]) == 0
    assert (
        main(
            [
                "hub",
                "experiments",
                "create",
                "t1",
                "--funnel",
                "shop",
                "--variants",
                "A=1,B=1",
                "--decision-step",
                "buy",
                *base,
            ]
        )
        == 0
    )
    assert main(["hub", "experiments", "start", "t1", *base, "--json"]) == 0
    capsys.readouterr()
    assert main(["hub", "funnels", "list", *base]) == 0
    assert "view > cart > buy" in capsys.readouterr().out
    assert main(["hub", "experiments", "results", "t1", *base]) == 0
    out = capsys.readouterr().out
    assert "decision step buy" in out and "SRM: n/a" in out
    assert main(["hub", "experiments", "stop", "t1", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "stopped"
    assert main(["hub", "experiments", "start", "t1", *base]) == 2  # a NexusError: one line, exit 2


def test_bench_merge_figures(tmp_path: Path) -> None:
    from nexus_tools.bench_funnels import _merge

    result = _merge(f"sqlite:///{tmp_path / 'bench.sqlite3'}", counters=1000)
    assert result["node_counters"] == 1000 and result["node_counters_per_s"] > 0


@pytest.mark.slow
def test_bench_funnels_drives_the_edge_with_wrk_and_checks_its_store(capsys: pytest.CaptureFixture[str]) -> None:
    """Quick mode of ``nexus bench funnels``: wrk against a real edge and the echo, and the
    edge's store holds exactly the events wrk saw acknowledged."""
    need(shutil.which("wrk") is not None, "wrk is not installed (apt-get install wrk)")
    argv = [
        "bench",
        "funnels",
        "--json",
        "--duration",
        "2",
        "--rounds",
        "2",
        "--connections",
        "8",
        "--counters",
        "1000",
        "--redis",
        "",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    ingest = result["edge_ingest"]
    assert ingest["generator"] == "wrk" and ingest["rounds"] == 2 and ingest["connections"] == 8
    assert ingest["events_per_s"] > 0 and ingest["echo_rps"] > 0
    assert 0 < ingest["ratio"] < 1, ingest  # an event is a store transaction; the echo only returns the body
    assert 0 < ingest["p50_ms"] <= ingest["p99_ms"] and 0 < ingest["echo_p50_ms"] <= ingest["echo_p99_ms"]
    assert ingest["errors"] == 0 and ingest["echo_errors"] == 0
    assert (
        ingest["events_stored"]
        == ingest["events_acknowledged"]
        == ingest["events_sent"]
        == ingest["events_counted"]
        > 0
    )
    assert result["hub_merge"]["sqlite"]["node_counters"] == 1000
