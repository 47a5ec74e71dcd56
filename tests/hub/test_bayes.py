"""Results and bandit weights from merged counts, checked against closed forms."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.bayes import (
    chi2_sf,
    experiment_results,
    noise_seed_for,
    regularized_gamma_q,
    sample_ratio_check,
    thompson_weights,
    withheld_rule,
)
from hub.funnel_config import Allocation, Experiment, Funnel, FunnelConfigError, Variant
from models.errors import NexusError
from nexus_wire.assignment import ASSIGNED

FUNNEL = Funnel("shop", ("view", "cart", "buy"))


def experiment(allocation: Allocation = Allocation.FIXED, weights: tuple[float, ...] = (1.0, 1.0)) -> Experiment:
    names = "ABCDE"[: len(weights)]
    return Experiment(
        id="exp",
        funnel_id="shop",
        variants=tuple(Variant(n, w) for n, w in zip(names, weights)),
        decision_step="buy",
        allocation=allocation,
    )


def counts(**per_variant: tuple[int, int, int, int]) -> dict[tuple[str, str], int]:
    """variant=(assigned, view, cart, buy)"""
    out = {}
    for name, (n, view, cart, buy) in per_variant.items():
        out.update({(name, ASSIGNED): n, (name, "view"): view, (name, "cart"): cart, (name, "buy"): buy})
    return out


# --- chi-square survival function ------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "dof", "p"),
    [
        (3.841458820694124, 1, 0.05),
        (5.991464547107979, 2, 0.05),
        (11.070497693516351, 5, 0.05),
        (23.209251158954356, 10, 0.01),
        (0.0, 3, 1.0),
    ],
)
def test_chi2_sf_matches_tabulated_critical_values(x: float, dof: int, p: float) -> None:
    assert chi2_sf(x, dof) == pytest.approx(p, rel=1e-9)


@given(st.floats(0, 400))
def test_chi2_sf_matches_closed_forms_for_one_and_two_dof(x: float) -> None:
    assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9, abs=1e-300)
    assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9, abs=1e-300)


@given(st.integers(1, 60), st.floats(0.01, 150))
def test_upper_gamma_matches_poisson_sum_for_integer_a(a: int, x: float) -> None:
    # Q(n, x) = P(Poisson(x) < n)
    poisson = sum(math.exp(-x + k * math.log(x) - math.lgamma(k + 1)) for k in range(a))
    assert regularized_gamma_q(a, x) == pytest.approx(poisson, rel=1e-8, abs=1e-300)


# --- posteriors -----------------------------------------------------------------------


def exact_prob_b_beats_a(conv_a: int, n_a: int, conv_b: int, n_b: int) -> float:
    """P(p_B > p_A) for Beta(1+conv, 1+n-conv) posteriors (Evan Miller's closed form)."""
    a_a, b_a, a_b, b_b = 1 + conv_a, 1 + n_a - conv_a, 1 + conv_b, 1 + n_b - conv_b

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    return sum(
        math.exp(log_beta(a_a + i, b_a + b_b) - math.log(b_b + i) - log_beta(1 + i, b_b) - log_beta(a_a, b_a))
        for i in range(a_b)
    )


@pytest.mark.parametrize(("conv_a", "conv_b"), [(100, 130), (100, 100), (40, 35)])
def test_probability_to_beat_control_matches_closed_form(conv_a: int, conv_b: int) -> None:
    res = experiment_results(experiment(), FUNNEL, counts(A=(1000, 1000, 400, conv_a), B=(1000, 1000, 400, conv_b)))
    exact = exact_prob_b_beats_a(conv_a, 1000, conv_b, 1000)
    assert res.step("B", "buy").prob_beat_control == pytest.approx(exact, abs=0.006)
    assert res.step("A", "buy").prob_beat_control is None  # the control is not compared with itself


def test_credible_interval_matches_beta_quantiles() -> None:
    # 0 of 9 converted: Beta(1, 10), whose quantile function is 1 - (1 - q) ** (1 / 10).
    res = experiment_results(experiment(), FUNNEL, counts(A=(9, 9, 0, 0), B=(9, 9, 0, 0)))
    step = res.step("A", "buy")
    assert step.rate == 0.0
    assert step.ci_low == pytest.approx(1 - 0.975**0.1, abs=0.001)
    assert step.ci_high == pytest.approx(1 - 0.025**0.1, abs=0.003)


def test_expected_loss_favours_the_better_variant() -> None:
    res = experiment_results(experiment(), FUNNEL, counts(A=(2000, 2000, 600, 200), B=(2000, 2000, 600, 260)))
    a, b = res.step("A", "buy"), res.step("B", "buy")
    assert b.expected_loss < 0.001 < a.expected_loss
    # Choosing A loses about the gap in rates, 0.03, when B is almost surely better.
    assert a.expected_loss == pytest.approx(0.03, abs=0.005)
    assert b.rate == pytest.approx(0.13)


def test_results_are_deterministic_and_serialisable() -> None:
    data = counts(A=(500, 500, 100, 50), B=(510, 510, 120, 61))
    first = experiment_results(experiment(), FUNNEL, data, seed=7)
    assert first == experiment_results(experiment(), FUNNEL, data, seed=7)
    assert json.loads(json.dumps(first.to_dict()))["variants"][1]["steps"][2]["reached"] == 61


def test_decision_step_outside_the_funnel_is_refused() -> None:
    bad = Experiment("exp", "shop", (Variant("A", 1), Variant("B", 1)), decision_step="checkout")
    with pytest.raises(FunnelConfigError):
        experiment_results(bad, FUNNEL, {})


# --- suppression and noise ------------------------------------------------------------


def test_small_counts_and_small_complements_are_withheld() -> None:
    res = experiment_results(
        experiment(), FUNNEL, counts(A=(1000, 995, 300, 4), B=(1000, 1000, 320, 30)), min_group_size=10
    )
    assert res.step("A", "buy").reached is None and res.step("A", "buy").rate is None  # 4 < 10
    assert res.step("A", "view").reached is None  # 1000 - 995 = 5 visitors who did not view
    assert res.step("B", "view").reached == 1000  # a complement of 0 identifies nobody
    # Anything computed from a withheld count is withheld too.
    assert res.step("B", "buy").prob_beat_control is None
    assert res.step("B", "buy").expected_loss is None
    assert res.step("B", "cart").prob_beat_control is not None


def test_the_words_shown_with_the_results_cover_a_withheld_large_count() -> None:
    """995 of 1000 is withheld although 995 is not small: the footnote must say why."""
    rule = withheld_rule(10)
    assert "reached it and the assigned ones who did not are each 0 or at least 10" in rule
    assert "computed from a withheld count is withheld too" in rule


def test_a_small_variant_is_withheld_whole_and_disables_srm() -> None:
    res = experiment_results(experiment(), FUNNEL, counts(A=(1000, 1000, 300, 100), B=(7, 7, 2, 1)), min_group_size=10)
    b = res.variants[1]
    assert b.assigned is None and all(s.reached is None for s in b.steps)
    assert res.srm is None


def test_laplace_noise_is_seeded_and_keeps_counts_consistent() -> None:
    data = counts(A=(1000, 1000, 300, 100), B=(1000, 990, 320, 120))
    noisy = experiment_results(experiment(), FUNNEL, data, noise_scale=5.0, noise_seed=3)
    assert noisy == experiment_results(experiment(), FUNNEL, data, noise_scale=5.0, noise_seed=3)
    assert noisy != experiment_results(experiment(), FUNNEL, data, noise_scale=5.0, noise_seed=4)
    shown = [(v.assigned, s.reached) for v in noisy.variants for s in v.steps]
    assert any(r != data[(v.name, s.step)] for v in noisy.variants for s in v.steps for r in [s.reached])
    assert all(0 <= reached <= assigned for assigned, reached in shown)
    assert all(abs(s.reached - data[(v.name, s.step)]) < 60 for v in noisy.variants for s in v.steps)


# --- sample ratio mismatch ------------------------------------------------------------


def test_srm_passes_a_fair_split_and_flags_a_skewed_one() -> None:
    fair = experiment_results(experiment(weights=(0.7, 0.3)), FUNNEL, counts(A=(7040, 0, 0, 0), B=(2960, 0, 0, 0)))
    assert fair.srm is not None and not fair.srm.mismatch and fair.srm.p_value > 0.2
    skewed = experiment_results(experiment(), FUNNEL, counts(A=(5000, 0, 0, 0), B=(5400, 0, 0, 0)))
    assert skewed.srm is not None and skewed.srm.mismatch and skewed.srm.p_value < 0.001
    assert skewed.srm.dof == 1


def test_srm_is_not_run_against_moving_thompson_weights() -> None:
    res = experiment_results(experiment(Allocation.THOMPSON), FUNNEL, counts(A=(100, 0, 0, 0), B=(900, 0, 0, 0)))
    assert res.srm is None


def test_srm_without_traffic_is_none() -> None:
    assert sample_ratio_check({"A": 0, "B": 0}, {"A": 1, "B": 1}) is None


# --- Thompson sampling ----------------------------------------------------------------


def test_thompson_weights_sum_to_one_respect_the_floor_and_follow_the_winner() -> None:
    exp = experiment(Allocation.THOMPSON, weights=(1, 1, 1))
    data = counts(A=(3000, 0, 0, 300), B=(3000, 0, 0, 420), C=(3000, 0, 0, 290))
    weights = thompson_weights(exp, data, floor=0.05, seed=1)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert min(weights.values()) >= 0.05
    assert weights["B"] == pytest.approx(0.9, abs=0.001)  # P(best) ~ 1, lifted floor on A and C
    assert weights == thompson_weights(exp, data, floor=0.05, seed=1)


def test_thompson_without_data_splits_evenly() -> None:
    weights = thompson_weights(experiment(Allocation.THOMPSON, weights=(1, 1, 1)), {}, seed=0)
    assert all(w == pytest.approx(1 / 3, abs=0.02) for w in weights.values())


@pytest.mark.parametrize("floor", [0.0, 0.4])
def test_thompson_floor_must_be_positive_and_leave_room_for_every_arm(floor: float) -> None:
    with pytest.raises(NexusError):
        thompson_weights(experiment(Allocation.THOMPSON, weights=(1, 1, 1)), {}, floor=floor)


def test_noise_seed_is_stable_for_the_same_counts_and_fresh_for_new_ones() -> None:
    data = counts(A=(1000, 1000, 300, 100), B=(1000, 990, 320, 120))
    seed = noise_seed_for(b"hub-secret", "exp", data)
    assert seed == noise_seed_for(b"hub-secret", "exp", dict(reversed(list(data.items()))))
    assert seed != noise_seed_for(b"hub-secret", "exp", {**data, ("B", "buy"): 121})
    assert seed != noise_seed_for(b"other-secret", "exp", data)
