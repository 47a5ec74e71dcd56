"""Evaluation metrics in plain numpy (no scikit-learn at run time)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic, ties given their mean rank."""
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # mean rank for each run of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    mean_ranks = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_ranks, ends - starts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 of each column of two boolean [N, C] matrices (0 where a class is never seen nor predicted)."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    tp = (y_true & y_pred).sum(axis=0).astype(np.float64)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_per_class(y_true, y_pred).mean())


def log_loss(y_true: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


#: counts a metrics block carries beside its scores; a summary shows the scores
_COUNTS = frozenset({"n", "nodes", "round", "rows"})


def headline(metrics: Mapping[str, Any]) -> str | None:
    """A bundle manifest's scores in one line, ``roc_auc=0.924 log_loss=0.243``: the ONNX
    backend's where metrics are per backend, else the first block of numbers, counts left out."""
    block: Mapping[str, Any] = metrics
    for _ in range(4):  # manifests nest metrics two or three deep
        if isinstance(block.get("onnx"), Mapping):
            block = block["onnx"]
        found = {
            k: v
            for k, v in block.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _COUNTS
        }
        if found:
            return " ".join(f"{k}={v:.4g}" for k, v in found.items())
        nested = [v for v in block.values() if isinstance(v, Mapping)]
        if not nested:
            return None
        block = nested[0]
    return None
