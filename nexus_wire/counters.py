"""The funnel counter keys an edge reports and the hub accepts (docs/funnels.md, "Counters")."""

from __future__ import annotations

from collections.abc import Iterable

from nexus_wire.assignment import ASSIGNED

CounterKey = tuple[str, str, str]  # (experiment id, variant, step)

#: the largest count, and the largest total over nodes, the hub accepts: an integer a JSON
#: reader (a browser's, Redis's Lua) and hub.bayes (floats) still hold exactly
MAX_COUNT = 2**53 - 1


def counter_keys(experiment_id: str, variants: Iterable[str], steps: Iterable[str]) -> frozenset[CounterKey]:
    """Every key of one experiment: each variant at ``$assigned`` and at each step of its funnel."""
    counted = (ASSIGNED, *steps)
    return frozenset((experiment_id, variant, step) for variant in variants for step in counted)
