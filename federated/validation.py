"""Server-side checks on decoded node updates before they reach any aggregator.

An update is rejected when its arrays do not match the global model's names and shapes,
hold NaN or infinity, or move the model absurdly far: beyond an absolute cap on the L2
norm of the change, or (with three or more updates in the round) beyond a multiple of
the round's median change, which a scaled or poisoned update hits long before the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Weights = dict[str, np.ndarray]
#: default absolute cap on ||update - global||_2; honest local epochs move far less
MAX_UPDATE_NORM = 1e4
#: an update moving more than this times the round's median is an outlier
MEDIAN_FACTOR = 10.0


@dataclass(frozen=True)
class Verdict:
    index: int
    reason: str | None  # None = accepted
    norm: float


def structural_problem(update: Weights, base: Weights) -> str | None:
    if set(update) != set(base):
        return f"arrays {sorted(update)} do not match the model's {sorted(base)}"
    for name, ref in base.items():
        got = update[name]
        if got.shape != ref.shape:
            return f"{name} has shape {got.shape}, expected {ref.shape}"
        if got.dtype.kind != "f":
            return f"{name} has dtype {got.dtype}, expected floating point"
        if not np.all(np.isfinite(got)):
            return f"{name} holds NaN or infinite values"
    return None


def update_norm(update: Weights, base: Weights) -> float:
    return float(np.sqrt(sum(np.sum((update[k].astype(np.float64) - base[k]) ** 2) for k in base)))


def judge(updates: list[Weights], base: Weights, max_norm: float = MAX_UPDATE_NORM) -> list[Verdict]:
    """One verdict per update, in order."""
    verdicts: list[Verdict] = []
    for i, update in enumerate(updates):
        problem = structural_problem(update, base)
        norm = float("nan") if problem else update_norm(update, base)
        if problem is None and norm > max_norm:
            problem = f"update norm {norm:.3g} exceeds the cap {max_norm:.3g}"
        verdicts.append(Verdict(i, problem, norm))
    norms = [v.norm for v in verdicts if v.reason is None]
    if len(norms) >= 3:
        limit = MEDIAN_FACTOR * float(np.median(norms))
        verdicts = [
            Verdict(
                v.index,
                f"update norm {v.norm:.3g} is over {MEDIAN_FACTOR:g}x the round median {limit / MEDIAN_FACTOR:.3g}",
                v.norm,
            )
            if v.reason is None and v.norm > limit and limit > 0
            else v
            for v in verdicts
        ]
    return verdicts
