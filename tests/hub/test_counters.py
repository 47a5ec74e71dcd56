"""G-counter merge of funnel counts: lattice laws and a sync model with real-world faults."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import ValidationError

from edge_worker.funnels import FunnelConfig
from hub.counters import (
    CounterState,
    NodeReport,
    apply_reports,
    as_state,
    experiment_totals,
    merge,
    overflowing,
    totals,
)
from hub.funnel_config import Allocation, Experiment, Funnel, FunnelConfigError, Status, Variant
from hub.funnel_schemas import ExperimentIn, FunnelIn, NodeReportIn, config_document, config_etag
from nexus_wire.assignment import ASSIGNED
from nexus_wire.counters import CounterKey, counter_keys

NODES = ["edge-1", "edge-2", "edge-3"]
KEYS: list[CounterKey] = [
    (exp, variant, step) for exp in ("e1", "e2") for variant in ("A", "B") for step in (ASSIGNED, "cart", "buy")
]

keys = st.sampled_from(KEYS)
nodes = st.sampled_from(NODES)
states = st.dictionaries(keys, st.dictionaries(nodes, st.integers(0, 10_000), min_size=1), max_size=len(KEYS))


@given(states, states)
def test_merge_is_commutative(a: CounterState, b: CounterState) -> None:
    assert merge(a, b) == merge(b, a)


@given(states, states, states)
def test_merge_is_associative(a: CounterState, b: CounterState, c: CounterState) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(states, states)
def test_merge_is_idempotent_and_leaves_inputs_alone(a: CounterState, b: CounterState) -> None:
    before_a, before_b = copy.deepcopy(a), copy.deepcopy(b)
    ab = merge(a, b)
    assert merge(ab, b) == ab
    assert merge(a, a) == a
    assert merge(a, {}) == a
    assert (a, b) == (before_a, before_b)


@given(states, states)
def test_merge_never_loses_a_count(a: CounterState, b: CounterState) -> None:
    ab = merge(a, b)
    for state in (a, b):
        for key, per_node in state.items():
            for node, count in per_node.items():
                assert ab[key][node] >= count


@given(st.lists(st.tuples(nodes, keys), max_size=200), st.randoms(use_true_random=False), st.data())
def test_any_order_with_duplicates_gives_the_true_totals(
    events: list[tuple[str, CounterKey]], rnd, data: st.DataObject
) -> None:
    # Each node reports its absolute counts after every event; the hub receives all of
    # those reports shuffled, some of them several times.
    local: dict[str, dict[CounterKey, int]] = {n: {} for n in NODES}
    reports = []
    for node, key in events:
        local[node][key] = local[node].get(key, 0) + 1
        reports.append(NodeReport(node, dict(local[node])))
    dupes = data.draw(st.lists(st.sampled_from(reports), max_size=20)) if reports else []
    delivered = reports + dupes
    rnd.shuffle(delivered)
    hub = apply_reports({}, delivered)
    truth: dict[CounterKey, int] = {}
    for per_node in local.values():
        for key, count in per_node.items():
            truth[key] = truth.get(key, 0) + count
    assert totals(hub) == truth


class EdgeHubSync(RuleBasedStateMachine):
    """Three edges count visitors and sync absolute counts to a hub over an unreliable link.

    - an edge's store (``local``) survives restarts; what it believes the hub has (``acked``)
      and its unsent reports are memory only, so a restarted edge re-sends all its counts;
    - reports in flight can arrive late, out of order, or twice;
    - while the hub is down, syncs are buffered by the edge and in-flight reports are lost;
      when it returns the buffers are delivered, in an order the test picks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local: dict[str, dict[CounterKey, int]] = {n: {} for n in NODES}
        self.acked: dict[str, dict[CounterKey, int]] = {n: {} for n in NODES}
        self.buffered: dict[str, list[NodeReport]] = {n: [] for n in NODES}
        self.in_flight: list[NodeReport] = []
        self.hub: CounterState = {}
        self.hub_up = True

    def truth(self) -> dict[CounterKey, int]:
        out: dict[CounterKey, int] = {}
        for per_node in self.local.values():
            for key, count in per_node.items():
                out[key] = out.get(key, 0) + count
        return out

    def _send(self, report: NodeReport) -> None:
        (self.in_flight if self.hub_up else self.buffered[report.node_id]).append(report)

    def _deliver(self, report: NodeReport) -> None:
        if not self.hub_up:
            return  # connection refused: the edge has no ack, so it will send again
        self.hub = merge(self.hub, as_state(report))
        acked = self.acked[report.node_id]
        for key, count in report.counts.items():
            acked[key] = max(acked.get(key, 0), count)

    @rule(node=nodes, key=keys)
    def count_visitor(self, node: str, key: CounterKey) -> None:
        self.local[node][key] = self.local[node].get(key, 0) + 1

    @rule(node=nodes)
    def sync_changes(self, node: str) -> None:
        changed = {k: v for k, v in self.local[node].items() if self.acked[node].get(k) != v}
        if changed:
            self._send(NodeReport(node, changed))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver_one(self, data: st.DataObject, duplicate: bool) -> None:
        i = data.draw(st.integers(0, len(self.in_flight) - 1))
        report = self.in_flight[i] if duplicate else self.in_flight.pop(i)
        self._deliver(report)

    @rule(node=nodes)
    def restart_edge(self, node: str) -> None:
        self.acked[node] = {}
        self.buffered[node] = []
        if self.local[node]:
            self._send(NodeReport(node, dict(self.local[node])))  # start-up sync from the store

    @precondition(lambda self: self.hub_up)
    @rule()
    def hub_goes_down(self) -> None:
        self.hub_up = False

    @precondition(lambda self: not self.hub_up)
    @rule(data=st.data())
    def hub_returns(self, data: st.DataObject) -> None:
        self.hub_up = True
        backlog = [r for n in NODES for r in self.buffered[n]]
        self.buffered = {n: [] for n in NODES}
        self.in_flight.extend(data.draw(st.permutations(backlog)))

    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        """Hub up, every edge syncs, everything in flight (stale copies included) arrives in any order."""
        if not self.hub_up:
            self.hub_returns(data)
        for node in NODES:
            self.sync_changes(node)
        for report in data.draw(st.permutations(self.in_flight)):
            self._deliver(report)
        self.in_flight = []
        assert totals(self.hub) == self.truth()

    @invariant()
    def hub_never_overcounts(self) -> None:
        for key, per_node in self.hub.items():
            for node, count in per_node.items():
                assert count <= self.local[node].get(key, 0)

    def teardown(self) -> None:
        for report in self.in_flight:
            self._deliver(report)
        self.hub_up = True
        for node in NODES:
            if self.local[node]:
                self._deliver(NodeReport(node, dict(self.local[node])))
        assert totals(self.hub) == self.truth()


TestEdgeHubSync = EdgeHubSync.TestCase
TestEdgeHubSync.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


def test_restart_resend_and_late_stale_report_are_harmless() -> None:
    key = ("e1", "B", "buy")
    early = NodeReport("edge-1", {key: 3})
    after_restart = NodeReport("edge-1", {key: 7})  # re-read from the edge's store
    hub = apply_reports({}, [early, after_restart, after_restart, early])
    assert totals(hub) == {key: 7}


def test_wiped_store_must_enroll_under_a_new_node_id() -> None:
    # The documented limit: a node that lost its store and kept its id hides new counts
    # under its old maximum; under a fresh id nothing is lost.
    key = ("e1", "A", "buy")
    hub = apply_reports({}, [NodeReport("edge-1", {key: 10})])
    assert totals(apply_reports(hub, [NodeReport("edge-1", {key: 4})])) == {key: 10}
    assert totals(apply_reports(hub, [NodeReport("edge-1b", {key: 4})])) == {key: 14}


def test_experiment_totals_selects_one_experiment() -> None:
    hub = apply_reports(
        {},
        [
            NodeReport("edge-1", {("e1", "A", ASSIGNED): 5, ("e2", "A", ASSIGNED): 9}),
            NodeReport("edge-2", {("e1", "A", ASSIGNED): 2}),
        ],
    )
    assert experiment_totals(hub, "e1") == {("A", ASSIGNED): 7}


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_report_counts_must_be_non_negative_integers(bad: object) -> None:
    with pytest.raises(ValueError):
        NodeReport("edge-1", {("e1", "A", "buy"): bad})


# --- config that produces counter keys (hub/funnel_config.py, hub/funnel_schemas.py) ----

SHOP = Funnel("shop", ("view", "cart", "buy"))


def two_arms(**changes: object) -> Experiment:
    fields = dict(id="exp1", funnel_id="shop", variants=(Variant("A", 1), Variant("B", 1)), decision_step="buy")
    fields.update(changes)
    return Experiment(**fields)


@pytest.mark.parametrize("bad", ["", "a:b", "with space", "-lead", "é", "x" * 65, "a/b", "$assigned"])
def test_ids_that_could_break_counter_keys_are_refused(bad: str) -> None:
    with pytest.raises(FunnelConfigError):
        Funnel(bad, ("view",))
    with pytest.raises(FunnelConfigError):
        Funnel("shop", (bad,))
    with pytest.raises(FunnelConfigError):
        two_arms(variants=(Variant("A", 1), Variant(bad, 1)))


@pytest.mark.parametrize(
    "changes",
    [
        dict(variants=(Variant("A", 1),)),
        dict(variants=(Variant("A", 1), Variant("A", 2))),
        dict(version=0),
        dict(status="paused"),
        dict(allocation="epsilon-greedy"),
        dict(salt="a:b"),
    ],
)
def test_invalid_experiments_are_refused(changes: dict) -> None:
    with pytest.raises(FunnelConfigError):
        two_arms(**changes)


@pytest.mark.parametrize("weight", [0, -1, float("nan"), float("inf"), True])
def test_weights_must_be_positive_numbers(weight: object) -> None:
    with pytest.raises(FunnelConfigError):
        Variant("A", weight)


def test_funnel_steps_are_unique_and_present() -> None:
    with pytest.raises(FunnelConfigError):
        Funnel("shop", ())
    with pytest.raises(FunnelConfigError):
        Funnel("shop", ("view", "view"))


def test_decision_step_must_belong_to_the_funnel() -> None:
    with pytest.raises(FunnelConfigError):
        two_arms(decision_step="pay").validate_against(SHOP)
    with pytest.raises(FunnelConfigError):
        two_arms(funnel_id="other").validate_against(SHOP)


def test_status_moves_forward_and_every_change_bumps_the_version() -> None:
    exp = two_arms(status="draft", allocation="thompson")
    assert exp.status is Status.DRAFT and exp.allocation is Allocation.THOMPSON
    running = exp.with_status("running")
    assert running.version == 2
    reweighted = running.with_weights({"A": 0.2, "B": 0.8})
    assert reweighted.version == 3 and reweighted.weights == pytest.approx({"A": 0.2, "B": 0.8})
    stopped = reweighted.with_status(Status.STOPPED)
    for target in ("running", "draft"):
        with pytest.raises(FunnelConfigError):
            stopped.with_status(target)
    with pytest.raises(FunnelConfigError):
        running.with_weights({"A": 1.0})


def test_counter_keys_cover_assignment_and_every_step() -> None:
    keys = counter_keys("exp1", two_arms().variant_names, SHOP.steps)
    assert len(keys) == 2 * 4
    assert ("exp1", "B", ASSIGNED) in keys and ("exp1", "A", "cart") in keys


def test_an_edge_declares_exactly_the_keys_the_hub_accepts(tmp_path) -> None:
    # The hub accepts the keys of every published experiment; the edge derives its own from
    # the config document it pulled: both must name the same set, or counts get refused.
    running = two_arms(status="running")
    stopped = two_arms(id="exp0", variants=(Variant("A", 1), Variant("B", 1), Variant("C", 1)), status="stopped")
    draft = two_arms(id="exp2")
    edge = FunnelConfig(tmp_path)
    edge.replace('"v1"', config_document([SHOP], [running, stopped, draft]))
    accepted = {key for e in (running, stopped) for key in counter_keys(e.id, e.variant_names, SHOP.steps)}
    assert edge.counter_keys == accepted and len(accepted) == (2 + 3) * 4


def test_http_bodies_become_validated_dataclasses() -> None:
    funnel = FunnelIn.model_validate({"id": "shop", "steps": ["view", "cart", "buy"]}).to_funnel()
    assert funnel == SHOP
    body = {
        "id": "exp1",
        "funnel_id": "shop",
        "decision_step": "buy",
        "allocation": "thompson",
        "variants": [{"name": "A"}, {"name": "B", "weight": 3}],
    }
    exp = ExperimentIn.model_validate(body).to_experiment(funnel)
    assert exp.weights == {"A": 0.25, "B": 0.75} and exp.status is Status.DRAFT
    with pytest.raises(ValidationError):
        ExperimentIn.model_validate({**body, "unknown": 1})
    with pytest.raises(FunnelConfigError):
        ExperimentIn.model_validate({**body, "decision_step": "pay"}).to_experiment(funnel)
    report = NodeReportIn.model_validate(
        {"node_id": "edge-1", "counts": [{"experiment": "exp1", "variant": "A", "step": "$assigned", "count": 4}]}
    ).to_report()
    assert report.counts == {("exp1", "A", ASSIGNED): 4}
    with pytest.raises(ValidationError):
        NodeReportIn.model_validate(
            {"node_id": "edge-1", "counts": [{"experiment": "exp1", "variant": "A", "step": "buy", "count": -1}]}
        )


def test_config_document_lists_live_experiments_and_its_etag_follows_content() -> None:
    draft = two_arms()
    running = two_arms(id="exp2", status="running")
    doc = config_document([SHOP], [draft, running])
    assert [e["id"] for e in doc["experiments"]] == ["exp2"]
    assert doc["experiments"][0]["variants"] == [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]
    assert config_etag(doc) == config_etag(config_document([SHOP], [running, draft]))
    reweighted = running.with_weights({"A": 1, "B": 2})
    assert config_etag(doc) != config_etag(config_document([SHOP], [draft, reweighted]))


def test_overflowing_names_the_key_whose_total_over_nodes_would_pass_the_limit() -> None:
    key: CounterKey = ("exp1", "A", "buy")
    state: CounterState = {key: {"n-a": 90, "n-b": 5}}
    assert overflowing(state, NodeReport("n-b", {key: 10}), 100) is None  # 90 + 10
    assert overflowing(state, NodeReport("n-b", {key: 11}), 100) == key
    assert overflowing(state, NodeReport("n-a", {key: 3}), 100) is None  # the merge keeps 90: a retry is fine
    assert overflowing(state, NodeReport("n-c", {("exp1", "B", "buy"): 100}), 100) is None


@pytest.mark.parametrize("count", [2**53, 2**62, 2**63, -1])
def test_a_count_past_53_bits_is_refused_at_the_schema(count: int) -> None:
    row = {"experiment": "e", "variant": "A", "step": "buy", "count": count}
    with pytest.raises(ValidationError, match="count"):
        NodeReportIn.model_validate({"node_id": "n-1", "counts": [row]})


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), 1e7])
def test_a_weight_must_be_finite_and_bounded_at_the_schema(weight: float) -> None:
    with pytest.raises(ValidationError, match="weight"):
        ExperimentIn.model_validate(
            {
                "id": "e",
                "funnel_id": "f",
                "decision_step": "buy",
                "variants": [{"name": "A", "weight": weight}, {"name": "B"}],
            }
        )
