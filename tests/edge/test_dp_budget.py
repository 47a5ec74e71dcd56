"""The per-node RDP accountant: known values, stopping at the budget, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_worker.audit.dp_budget import ORDERS, BudgetExhausted, PrivacyBudget, gaussian_rdp, rdp_to_epsilon


def test_gaussian_rdp_is_alpha_over_two_sigma_squared():
    assert np.allclose(gaussian_rdp(2.0), ORDERS / 8.0)
    # Subsampling at q -> 1 converges to the plain mechanism, and q < 1 only helps.
    assert np.allclose(gaussian_rdp(2.0, 1 - 1e-12), ORDERS / 8.0, rtol=1e-6)
    assert (gaussian_rdp(2.0, 0.1) < gaussian_rdp(2.0)).all()


def test_epsilon_matches_the_closed_form_minimum():
    # One release at sigma = 1, delta = 1e-5: min over integer alpha of the Balle et al. 2020 bound.
    delta = 1e-5
    expected = min(a / 2 + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1) for a in range(2, 257))
    assert rdp_to_epsilon(gaussian_rdp(1.0), delta) == pytest.approx(expected)
    # Composition: more rounds never cost less, and more noise always costs less.
    assert rdp_to_epsilon(10 * gaussian_rdp(1.0), delta) > expected
    assert rdp_to_epsilon(gaussian_rdp(4.0), delta) < expected


def test_spending_stops_before_the_budget_is_exceeded(tmp_path):
    budget = PrivacyBudget(tmp_path, epsilon=3.0, delta=1e-5)
    spent = []
    while budget.can_spend(4.0):
        spent.append(budget.spend(4.0, label=f"round {len(spent) + 1}"))
    assert spent and spent == sorted(spent) and spent[-1] <= 3.0
    assert budget.epsilon_after(4.0) > 3.0
    with pytest.raises(BudgetExhausted, match="privacy budget exhausted"):
        budget.spend(4.0)
    assert budget.summary()["rounds"] == len(spent)  # the refused round was not recorded
    assert budget.remaining == pytest.approx(3.0 - spent[-1])


def test_the_budget_persists_across_reopen(tmp_path):
    first = PrivacyBudget(tmp_path, epsilon=10.0, delta=1e-6)
    first.spend(2.0, rounds=3)
    second = PrivacyBudget(tmp_path)
    assert (second.epsilon_budget, second.delta) == (10.0, 1e-6)
    assert second.spent == pytest.approx(first.spent) and second.summary()["rounds"] == 3
    # Two handles on one file (two ClientApp processes) share one budget.
    second.spend(2.0)
    first.refresh()
    assert first.summary()["rounds"] == 4 and first.spent == pytest.approx(second.spent)


def test_without_a_limit_spending_is_only_recorded(tmp_path):
    budget = PrivacyBudget(tmp_path)
    assert budget.epsilon_budget is None and budget.remaining is None
    budget.spend(0.5, rounds=50)
    assert budget.can_spend(0.5) and budget.spent > 10
    summary = budget.summary()
    assert summary["history"][-1]["rounds"] == 50 and "RDP" in summary["accountant"]
