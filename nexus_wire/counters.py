"""The funnel counter keys an edge reports and the hub accepts (docs/funnels.md, "Counters")."""

from __future__ import annotations

from collections.abc import Iterable

from nexus_wire.assignment import ASSIGNED

CounterKey = tuple[str, str, str]  # (experiment id, variant, step)


def counter_keys(experiment_id: str, variants: Iterable[str], steps: Iterable[str]) -> frozenset[CounterKey]:
    """Every key of one experiment: each variant at ``$assigned`` and at each step of its funnel."""
    counted = (ASSIGNED, *steps)
    return frozenset((experiment_id, variant, step) for variant in variants for step in counted)
