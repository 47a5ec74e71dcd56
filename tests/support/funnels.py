"""A funnel with a known truth, and visitors sent through it (tests/hub/test_funnel_simulation.py
in process, tests/e2e/test_funnels.py over HTTP)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from hub.funnel_config import Funnel

FUNNEL = Funnel("shop", ("view", "cart", "buy"))
TRUTH: dict[str, dict[str, float]] = {  # P(visitor reaches the step), nested: buy implies cart implies view
    "A": {"view": 1.0, "cart": 0.30, "buy": 0.10},
    "B": {"view": 1.0, "cart": 0.35, "buy": 0.14},
}
SEED = 2026


def run_visitors(
    visitors: Iterable[str],
    assign: Callable[[str], str],
    record: Callable[[str, str], None],
    steps: tuple[str, ...],
    truth: Mapping[str, Mapping[str, float]],
    rng: np.random.Generator,
) -> list[str]:
    """Send each visitor through the funnel as far as its variant's truth says; returns the variants."""
    given = []
    for visitor in visitors:
        variant = assign(visitor)
        given.append(variant)
        reach = truth[variant]
        previous = 1.0
        for step in steps:
            # Step k given step k-1 happens with reach[k] / reach[k-1], so marginals equal the truth.
            if rng.random() >= reach[step] / previous:
                break
            record(visitor, step)
            previous = reach[step]
    return given
