"""Funnel counters merged across edges as grow-only counters (G-counters).

Each edge counts unique visitors per (experiment, variant, step) in its own store and
reports its *absolute* local counts. The hub keeps, per key, the highest count it has
seen from each node; a key's total is the sum over nodes. Because a report carries
absolute values and the merge is a per-node max, applying a report twice, late, out of
order, or again after an edge restart (the edge re-reads its counts from its store)
never changes the result beyond what the newest report says: no sequence numbers or
idempotency keys are needed for correctness.

The one thing this does not survive is a node that *loses* its store and reuses its id:
its counts would start again from 0 and stay hidden under the old maximum until they
overtake it. A node whose store is wiped must enroll under a new node id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nexus_wire.counters import CounterKey

CounterState = dict[CounterKey, dict[str, int]]  # key -> {node_id: count}


@dataclass(frozen=True)
class NodeReport:
    """A node's absolute local counts (all of them, or just the keys changed since its last sync)."""

    node_id: str
    counts: Mapping[CounterKey, int]

    def __post_init__(self) -> None:
        for key, value in self.counts.items():
            if type(value) is not int or value < 0:
                raise ValueError(f"count for {key} must be a non-negative integer, got {value!r}")


def merge(a: CounterState, b: CounterState) -> CounterState:
    """Join of two states: per key and node, the larger count. Inputs are left untouched."""
    out: CounterState = {key: dict(nodes) for key, nodes in a.items()}
    for key, nodes in b.items():
        target = out.setdefault(key, {})
        for node, count in nodes.items():
            if count > target.get(node, -1):
                target[node] = count
    return out


def as_state(report: NodeReport) -> CounterState:
    return {key: {report.node_id: count} for key, count in report.counts.items()}


def apply_reports(state: CounterState, reports: Iterable[NodeReport]) -> CounterState:
    for report in reports:
        state = merge(state, as_state(report))
    return state


def totals(state: CounterState) -> dict[CounterKey, int]:
    return {key: sum(nodes.values()) for key, nodes in state.items()}


def overflowing(state: CounterState, report: NodeReport, limit: int) -> CounterKey | None:
    """The first key of ``report`` whose total would pass ``limit`` once merged into ``state``.

    Each count is bounded on the wire; this bounds their sum over nodes, so a total stays
    exact wherever it is read (hub.bayes works in floats, Redis's Lua in doubles)."""
    for key, count in sorted(report.counts.items()):
        nodes = state.get(key, {})
        others = sum(c for node, c in nodes.items() if node != report.node_id)
        if others + max(count, nodes.get(report.node_id, 0)) > limit:
            return key
    return None


def experiment_totals(state: CounterState, experiment_id: str) -> dict[tuple[str, str], int]:
    """``{(variant, step): total}`` for one experiment, the input of hub.bayes."""
    return {
        (variant, step): sum(nodes.values()) for (exp, variant, step), nodes in state.items() if exp == experiment_id
    }
