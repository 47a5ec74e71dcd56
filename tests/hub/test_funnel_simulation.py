"""Three edges, one hub, a known truth: does the funnel machinery find the better variant?

Truth (also in docs/funnels.md): every visitor views; A reaches the cart with 30% and buys
with 10%, B reaches the cart with 35% and buys with 14%. Visitors are spread over three
edges that assign with edge_worker.assignment and count unique visitors per step locally;
every CADENCE visitors each edge syncs its absolute counts to the hub (shuffled, with a
duplicate), the hub merges them and, for ``thompson``, publishes new weights, which the
edges pick up at their next pull (one edge always a cadence late).

``run_visitors`` (tests/support/funnels.py) is the reusable core: it only needs ``assign(visitor) -> variant`` and
``record(visitor, step)``, so the same scenario can drive real edges over HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_worker.assignment import sticky_assign
from hub.bayes import experiment_results, thompson_weights
from hub.counters import CounterState, NodeReport, apply_reports, experiment_totals, totals
from hub.funnel_config import Allocation, Experiment, Status, Variant
from nexus_wire.assignment import ASSIGNED
from nexus_wire.counters import CounterKey
from tests.support.funnels import FUNNEL, SEED, TRUTH, run_visitors

VISITORS = 6_000  # the stated sample size for both allocations
CADENCE = 500  # visitors between syncs (and Thompson updates)
THOMPSON_SHARE = 0.75  # B's share of visitors 3,001-6,000 must exceed this


@dataclass
class SimEdge:
    """What an edge does for funnels, minus HTTP: sticky assignment and deduplicated local counts."""

    node_id: str
    experiment: Experiment
    assignments: dict[str, str] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    counts: dict[CounterKey, int] = field(default_factory=dict)

    def _count(self, variant: str, step: str) -> None:
        key = (self.experiment.id, variant, step)
        self.counts[key] = self.counts.get(key, 0) + 1

    def assign(self, visitor: str) -> str:
        stored = self.assignments.get(visitor)
        e = self.experiment
        variant = sticky_assign(stored, e.id, e.salt, visitor, [(v.name, v.weight) for v in e.variants])
        if stored is None:
            self.assignments[visitor] = variant
            self._count(variant, ASSIGNED)
        return variant

    def record(self, visitor: str, step: str) -> None:
        if (visitor, step) not in self.seen:
            self.seen.add((visitor, step))
            self._count(self.assignments[visitor], step)

    def report(self) -> NodeReport:
        return NodeReport(self.node_id, dict(self.counts))


@dataclass
class SimResult:
    hub: CounterState
    experiment: Experiment
    edges: list[SimEdge]
    variants: list[str]  # the variant of each visitor, in arrival order


def simulate(allocation: Allocation, visitors: int = VISITORS, seed: int = SEED) -> SimResult:
    rng = np.random.default_rng(seed)
    experiment = Experiment(
        "checkout-test", "shop", (Variant("A", 0.5), Variant("B", 0.5)), "buy", Status.RUNNING, allocation
    )
    edges = [SimEdge(f"edge-{i}", experiment) for i in range(3)]
    hub: CounterState = {}
    given: list[str] = []
    published = experiment  # what the lagging edge sees at its next pull

    def edge_of(visitor: str) -> SimEdge:
        return edges[int(visitor.rsplit("-", 1)[1]) % len(edges)]

    for start in range(0, visitors, CADENCE):
        batch = [f"visitor-{i}" for i in range(start, min(start + CADENCE, visitors))]
        given += run_visitors(
            batch, lambda v: edge_of(v).assign(v), lambda v, s: edge_of(v).record(v, s), FUNNEL.steps, TRUTH, rng
        )
        reports = [edge.report() for edge in edges]
        reports.append(reports[int(rng.integers(len(reports)))])
        hub = apply_reports(hub, [reports[i] for i in rng.permutation(len(reports))])
        if allocation == Allocation.THOMPSON:
            counts = experiment_totals(hub, experiment.id)
            experiment = experiment.with_weights(thompson_weights(experiment, counts, seed=seed + start))
        for edge in edges[:-1]:
            edge.experiment = experiment
        edges[-1].experiment, published = published, experiment
    return SimResult(hub=hub, experiment=experiment, edges=edges, variants=given)


def test_thompson_moves_traffic_to_the_better_variant() -> None:
    sim = simulate(Allocation.THOMPSON)
    last = sim.variants[-3000:]
    share_b = last.count("B") / len(last)
    assert share_b > THOMPSON_SHARE, share_b
    assert sim.experiment.weights["B"] > THOMPSON_SHARE
    assert sim.experiment.weights["A"] >= 0.05  # the floor keeps the loser alive


def test_fixed_allocation_reports_b_better_with_high_probability() -> None:
    sim = simulate(Allocation.FIXED)
    results = experiment_results(sim.experiment, FUNNEL, experiment_totals(sim.hub, sim.experiment.id), seed=1)
    assert results.step("B", "buy").prob_beat_control > 0.95
    assert results.step("B", "buy").expected_loss < 0.001
    assert results.srm is not None and not results.srm.mismatch


def test_hub_totals_equal_the_sum_of_edge_counts() -> None:
    sim = simulate(Allocation.THOMPSON, visitors=3000)
    expected: dict[CounterKey, int] = {}
    for edge in sim.edges:
        for key, count in edge.counts.items():
            expected[key] = expected.get(key, 0) + count
    assert totals(sim.hub) == expected
    assert sum(c for (e, v, s), c in expected.items() if s == ASSIGNED) == 3000
