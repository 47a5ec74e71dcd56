"""Numpy MLP trainer for the funnel model; the same code runs centrally and on edge nodes.

Weights are ``{"w0": [F, H], "b0": [H], "w1": [H, 1], "b1": [1]}`` (float32, the names
the export graphs use); hidden layers are ReLU, the output a sigmoid. :func:`fit` starts
from the weights it is given and never mutates them, so a federated round can hand it
the global model and optionally pull towards it with a FedProx proximal term.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.metrics import log_loss, roc_auc
from models.progress import Progress

HIDDEN = 32
EPOCHS = 20
LR = 2e-3
BATCH_SIZE = 128
L2 = 1e-3
_BETAS = (0.9, 0.999)
_EPS = 1e-8

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class FitResult:
    weights: Weights
    metrics: dict[str, float] = field(default_factory=dict)


def _n_layers(weights: Mapping[str, np.ndarray]) -> int:
    n = len(weights) // 2
    if sorted(weights) != sorted([f"w{i}" for i in range(n)] + [f"b{i}" for i in range(n)]):
        raise ValueError(f"funnel weights must be w0, b0, w1, b1, ...; got {sorted(weights)}")
    return n


def init_weights(spec: Mapping[str, Any], seed: int, hidden: int = HIDDEN) -> Weights:
    """He-initialised F -> hidden ReLU -> 1 weights for the featurizer ``spec``."""
    rng = np.random.default_rng(seed)
    n_features = int(spec["n_features"])
    return {
        "w0": (rng.standard_normal((n_features, hidden)) * np.sqrt(2.0 / n_features)).astype(np.float32),
        "b0": np.zeros(hidden, dtype=np.float32),
        "w1": (rng.standard_normal((hidden, 1)) * np.sqrt(1.0 / hidden)).astype(np.float32),
        "b1": np.zeros(1, dtype=np.float32),
    }


def _forward(params: Mapping[str, np.ndarray], X: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits [B] and the input of every layer (kept for backprop)."""
    n = _n_layers(params)
    inputs = [X]
    h = X
    for i in range(n):
        z = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = np.maximum(z, 0.0)
            inputs.append(h)
    return z[:, 0], inputs


def predict(weights: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """P(purchase) [B] in float64: the reference the exported artifacts are checked against."""
    params = {k: v.astype(np.float64) for k, v in weights.items()}
    logits, _ = _forward(params, np.asarray(X, dtype=np.float64))
    return 1.0 / (1.0 + np.exp(-logits))


def evaluate_weights(weights: Mapping[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    probs = predict(weights, X)
    return {"loss": log_loss(y, probs), "roc_auc": roc_auc(y, probs), "n": int(len(y))}


def _gradients(params: Mapping[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> tuple[float, Weights]:
    """Mean binary cross-entropy and its gradient for one batch."""
    n = _n_layers(params)
    logits, inputs = _forward(params, X)
    # log(1 + e^z) - y z, computed without overflow
    loss = float(np.mean(np.logaddexp(0.0, logits) - y * logits))
    delta = ((1.0 / (1.0 + np.exp(-logits))) - y)[:, None] / len(y)
    grads: Weights = {}
    for i in reversed(range(n)):
        grads[f"w{i}"] = inputs[i].T @ delta
        grads[f"b{i}"] = delta.sum(axis=0)
        if i > 0:
            delta = (delta @ params[f"w{i}"].T) * (inputs[i] > 0)
    return loss, grads


def fit(
    weights: Mapping[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    epochs: int = EPOCHS,
    seed: int = 0,
    lr: float = LR,
    progress: Progress | None = None,
    *,
    mu: float = 0.0,
    batch_size: int = BATCH_SIZE,
    l2: float = L2,
) -> FitResult:
    """Adam on mean BCE + l2/2 ||w||^2 (weight matrices) + mu/2 ||theta - theta_start||^2.

    The proximal anchor is the starting point (FedProx: the global model of the round).
    Deterministic for a given seed, which orders the minibatches.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"fit needs X [N, F] and y [N] with N > 0; got {X.shape} and {y.shape}")
    anchor = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    params = {k: v.copy() for k, v in anchor.items()}
    if params["w0"].shape[0] != X.shape[1]:
        raise ValueError(f"weights expect {params['w0'].shape[0]} features, X has {X.shape[1]}")
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    rng = np.random.default_rng(seed)
    step = 0
    epoch_loss = float("nan")
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            loss, grads = _gradients(params, X[batch], y[batch])
            total += loss * len(batch)
            step += 1
            for k in params:
                g = grads[k]
                if l2 and k.startswith("w"):
                    g = g + l2 * params[k]
                if mu:
                    g = g + mu * (params[k] - anchor[k])
                m[k] = _BETAS[0] * m[k] + (1 - _BETAS[0]) * g
                v2[k] = _BETAS[1] * v2[k] + (1 - _BETAS[1]) * g * g
                m_hat = m[k] / (1 - _BETAS[0] ** step)
                v_hat = v2[k] / (1 - _BETAS[1] ** step)
                params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + _EPS)
        epoch_loss = total / len(y)
        if progress is not None:
            progress.update(1, epoch=epoch + 1, loss=epoch_loss)
    out = {k: v.astype(np.float32) for k, v in params.items()}
    return FitResult(out, {"train_loss": epoch_loss, "n": int(len(y)), "epochs": int(epochs)})
