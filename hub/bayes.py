"""Experiment results and Thompson weights from merged funnel counts.

Every conversion rate is (visitors who reached the step) / (visitors assigned to the
variant), with a Beta(1 + reached, 1 + assigned - reached) posterior (uniform prior).
Comparisons between variants are Monte Carlo over posterior draws from a seeded numpy
generator, so the same counts and seed always give the same numbers.

Privacy (see docs/funnels.md): counts can get Laplace noise, then any count (or its
complement, assigned - reached) strictly between 0 and ``min_group_size`` is withheld
together with every statistic computed from it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from hub.funnel_config import Allocation, Experiment, Funnel
from models.errors import NexusError
from nexus_wire.assignment import ASSIGNED

Counts = Mapping[tuple[str, str], int]  # (variant, step) -> unique visitors, see hub.counters.experiment_totals


def regularized_gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a): series below a + 1, Lentz continued fraction above."""
    if a <= 0 or x < 0:
        raise ValueError(f"need a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return math.exp(log_prefactor) * h


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square with ``dof`` degrees of freedom."""
    return regularized_gamma_q(dof / 2, x / 2)


@dataclass(frozen=True)
class SampleRatioCheck:
    """Chi-square goodness of fit of assigned counts against the configured shares."""

    chi2: float
    dof: int
    p_value: float
    mismatch: bool
    expected_shares: dict[str, float]


def sample_ratio_check(
    assigned: Mapping[str, int], shares: Mapping[str, float], alpha: float = 0.001
) -> SampleRatioCheck | None:
    """``None`` when nothing was assigned yet. ``alpha`` 0.001 is the usual SRM alarm level:
    a mismatch means broken assignment or lost events, not a result to interpret."""
    total = sum(assigned[name] for name in shares)
    if total == 0:
        return None
    share_sum = sum(shares.values())
    norm = {name: s / share_sum for name, s in shares.items()}
    chi2 = sum((assigned[name] - total * s) ** 2 / (total * s) for name, s in norm.items())
    p = chi2_sf(chi2, len(norm) - 1)
    return SampleRatioCheck(chi2=chi2, dof=len(norm) - 1, p_value=p, mismatch=p < alpha, expected_shares=norm)


@dataclass(frozen=True)
class StepResult:
    """``None`` fields are withheld: a count below the minimum group size went into them."""

    step: str
    reached: int | None
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    prob_beat_control: float | None  # always None for the control itself
    expected_loss: float | None  # E[max over variants - this one], in conversion-rate units


@dataclass(frozen=True)
class VariantResult:
    name: str
    weight: float
    assigned: int | None
    steps: tuple[StepResult, ...]


@dataclass(frozen=True)
class ExperimentResults:
    experiment_id: str
    version: int
    control: str
    decision_step: str
    variants: tuple[VariantResult, ...]
    srm: SampleRatioCheck | None
    min_group_size: int
    noise_scale: float
    draws: int
    seed: int

    def step(self, variant: str, step: str) -> StepResult:
        for v in self.variants:
            if v.name == variant:
                for s in v.steps:
                    if s.step == step:
                        return s
        raise KeyError((variant, step))

    def to_dict(self) -> dict:
        return asdict(self)


def withheld_rule(min_group_size: int) -> str:
    """The suppression rule of :func:`release_counts` in words, for whoever shows the results.
    A large count can be withheld too: when its complement is small, showing it would reveal those few."""
    k = min_group_size
    return (
        f"a step's count shows only when the visitors who reached it and the assigned ones who did not are"
        f" each 0 or at least {k}; an assigned count only when it is 0 or at least {k};"
        " what is computed from a withheld count is withheld too"
    )


def _shown(count: int, min_group_size: int) -> bool:
    return count == 0 or count >= min_group_size


def release_counts(
    experiment: Experiment,
    funnel: Funnel,
    counts: Counts,
    *,
    min_group_size: int,
    noise_scale: float,
    noise_seed: int,
) -> tuple[dict[str, int], dict[tuple[str, str], int], set[tuple[str, str]]]:
    """Counts as they may be shown: ``(assigned, reached, withheld keys)``.

    Noise comes first and suppression decides on the noisy values, so whether a count is
    withheld does not itself reveal that the true count is small.
    """
    if min_group_size < 0 or noise_scale < 0:
        raise NexusError("min_group_size and noise scale must be >= 0")
    rng = np.random.default_rng(noise_seed)

    def noisy(value: int) -> int:
        if noise_scale == 0:
            return value
        return max(0, int(round(value + rng.laplace(0.0, noise_scale))))

    assigned: dict[str, int] = {}
    reached: dict[tuple[str, str], int] = {}
    withheld: set[tuple[str, str]] = set()
    for name in experiment.variant_names:
        n = noisy(int(counts.get((name, ASSIGNED), 0)))
        assigned[name] = n
        if not _shown(n, min_group_size):
            withheld.add((name, ASSIGNED))
        for step in funnel.steps:
            # Noise (or a faulty edge) can put more visitors at a step than were assigned;
            # capping keeps the Beta parameters valid.
            c = min(noisy(int(counts.get((name, step), 0))), n)
            reached[(name, step)] = c
            if (name, ASSIGNED) in withheld or not (_shown(c, min_group_size) and _shown(n - c, min_group_size)):
                withheld.add((name, step))
    return assigned, reached, withheld


def noise_seed_for(secret: bytes, experiment_id: str, counts: Counts) -> int:
    """Seed for the Laplace noise, derived from a hub secret and the exact counts released.

    The same counts always get the same noise, so asking again cannot average it away; any
    change in the counts gets fresh noise, so the difference of two releases does not cancel
    the noise and reveal the exact change (which a constant seed would).
    """
    h = hashlib.sha256(secret + b"\0" + experiment_id.encode("utf-8"))
    for (variant, step), count in sorted(counts.items()):
        h.update(f"\0{variant}:{step}={count}".encode())
    return int.from_bytes(h.digest()[:8], "big")


def posterior_draws(reached: np.ndarray, assigned: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[variants, draws] samples of Beta(1 + reached, 1 + assigned - reached)."""
    a = 1.0 + reached
    b = 1.0 + assigned - reached
    return rng.beta(a[:, None], b[:, None], size=(len(reached), draws))


def experiment_results(
    experiment: Experiment,
    funnel: Funnel,
    counts: Counts,
    *,
    min_group_size: int = 0,
    noise_scale: float = 0.0,
    noise_seed: int = 0,
    draws: int = 50_000,
    seed: int = 0,
    srm_alpha: float = 0.001,
) -> ExperimentResults:
    experiment.validate_against(funnel)
    assigned, reached, withheld = release_counts(
        experiment, funnel, counts, min_group_size=min_group_size, noise_scale=noise_scale, noise_seed=noise_seed
    )
    names = experiment.variant_names
    rng = np.random.default_rng(seed)
    n = np.array([assigned[name] for name in names], dtype=float)
    per_variant: dict[str, list[StepResult]] = {name: [] for name in names}
    for step in funnel.steps:
        c = np.array([reached[(name, step)] for name in names], dtype=float)
        samples = posterior_draws(c, n, draws, rng)
        low, high = np.quantile(samples, [0.025, 0.975], axis=1)
        loss = samples.max(axis=0) - samples
        any_withheld = any((name, step) in withheld for name in names)
        for i, name in enumerate(names):
            if (name, step) in withheld:
                per_variant[name].append(StepResult(step, None, None, None, None, None, None))
                continue
            beats = None
            if i > 0 and (names[0], step) not in withheld:
                beats = float(np.mean(samples[i] > samples[0]))
            per_variant[name].append(
                StepResult(
                    step=step,
                    reached=int(c[i]),
                    rate=float(c[i] / n[i]) if n[i] else None,
                    ci_low=float(low[i]),
                    ci_high=float(high[i]),
                    prob_beat_control=beats,
                    expected_loss=None if any_withheld else float(loss[i].mean()),
                )
            )
    # Thompson moves the weights while it runs, so the current weights are no reference for SRM.
    srm = None
    if experiment.allocation == Allocation.FIXED and not any((name, ASSIGNED) in withheld for name in names):
        srm = sample_ratio_check(assigned, experiment.weights, srm_alpha)
    variants = tuple(
        VariantResult(
            name=name,
            weight=experiment.weights[name],
            assigned=None if (name, ASSIGNED) in withheld else assigned[name],
            steps=tuple(per_variant[name]),
        )
        for name in names
    )
    return ExperimentResults(
        experiment_id=experiment.id,
        version=experiment.version,
        control=experiment.control,
        decision_step=experiment.decision_step,
        variants=variants,
        srm=srm,
        min_group_size=min_group_size,
        noise_scale=noise_scale,
        draws=draws,
        seed=seed,
    )


def thompson_weights(
    experiment: Experiment, counts: Counts, *, floor: float = 0.05, draws: int = 20_000, seed: int = 0
) -> dict[str, float]:
    """New weights: P(variant is best at the decision step), lifted so none falls below ``floor``.

    ``weight = floor + (1 - k * floor) * P(best)`` keeps the sum at 1 and every arm alive, so a
    variant that started unlucky still collects the data to recover. Uses exact counts: the
    weights go to edges in the config and carry P(best), never a count.
    """
    names = experiment.variant_names
    # A zero weight would be an invalid Variant, and an arm that can never be tried again.
    if not 0 < floor <= 1 / len(names):
        raise NexusError(f"thompson floor must be in (0, 1/{len(names)}], got {floor}")
    n = np.array([counts.get((name, ASSIGNED), 0) for name in names], dtype=float)
    reached = np.array([counts.get((name, experiment.decision_step), 0) for name in names], dtype=float)
    # Capped as in release_counts: a faulty edge must not crash the hub.
    samples = posterior_draws(np.minimum(reached, n), n, draws, np.random.default_rng(seed))
    p_best = np.bincount(samples.argmax(axis=0), minlength=len(names)) / draws
    return {name: float(floor + (1 - len(names) * floor) * p) for name, p in zip(names, p_best)}
