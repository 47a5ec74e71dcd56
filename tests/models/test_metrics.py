"""Metrics against hand-computed values and brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np

from models.metrics import f1_per_class, macro_f1, roc_auc


def brute_force_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


def test_roc_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounding makes many ties
    assert abs(roc_auc(y, s) - brute_force_auc(y, s)) < 1e-12


def test_roc_auc_extremes() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert np.isnan(roc_auc(np.ones(3), np.arange(3)))


def test_f1_per_class_by_hand() -> None:
    y_true = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], bool)
    y_pred = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], bool)
    # class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: tp=1 fp=0 fn=1 -> 2/3
    assert np.allclose(f1_per_class(y_true, y_pred), [0.5, 2 / 3])
    assert abs(macro_f1(y_true, y_pred) - (0.5 + 2 / 3) / 2) < 1e-12
