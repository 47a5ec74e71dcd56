"""Numpy training of the emotion embedding bag, central or on an edge node (federated rounds).

``scores = sigmoid(sum_l weights[l] * E[ids[l]] @ W + b)`` with binary cross-entropy per
label. Embedding rows get lazy Adam (only the rows a batch touches are read or written,
as in fastText/LazyAdam), the dense layer plain Adam. Every random choice comes from one
``numpy.random.Generator`` seeded by the caller, so a seed gives bit-identical weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.metrics import f1_per_class
from models.progress import Progress

#: central training defaults, chosen on a train-internal holdout (never dev); federated rounds reuse them
BATCH_SIZE = 64
EPOCHS = 4
LR = 0.02
DROPOUT = 0.6
DIM = 16
#: the shipped bundle's n-gram dropout (train-internal holdout: 0.6 -> 0.568, 0.75 -> 0.572, 0.85 -> 0.571
#: cross-fit macro-F1); federated rounds keep DROPOUT
CENTRAL_DROPOUT = 0.75
#: with a teacher the soft targets already regularise: 0.5 -> 0.583, 0.6 -> 0.583, 0.75 -> 0.580 (same holdout)
DISTILLED_DROPOUT = 0.6
#: positive-term weight (neg/pos)**POS_WEIGHT_POWER per label: the rarer labels weigh more
POS_WEIGHT_POWER = 0.5
#: K of the K-fold fits whose out-of-fold train scores choose the thresholds
FOLDS = 4
#: models averaged (in logit space) into the shipped one; see :func:`collapse`
MEMBERS = 3
#: distillation: the hard labels' share of the targets, the teacher's scores the rest
#: (holdout, dropout 0.6: 0.25 -> 0.583, 0.5 -> 0.579; dropout 0.75: 0 -> 0.578, 0.25 -> 0.580, 0.5 -> 0.581)
HARD_SHARE = 0.25
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class ModelShape:
    buckets: int
    dim: int
    n_labels: int

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ModelShape:
        return cls(int(spec["buckets"]), int(spec["dim"]), int(spec["n_labels"]))


@dataclass
class FitResult:
    weights: dict[str, np.ndarray]
    metrics: dict[str, float]
    #: sorted embedding rows that received a gradient; a federated update ships only these
    touched_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def init_weights(spec: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """fastText's init: embedding uniform in +-1/dim, output layer zero."""
    shape = ModelShape.from_dict(spec)
    rng = np.random.default_rng(seed)
    bound = 1.0 / shape.dim
    return {
        "embedding": rng.uniform(-bound, bound, (shape.buckets, shape.dim)).astype(np.float32),
        "dense_w": np.zeros((shape.dim, shape.n_labels), np.float32),
        "dense_b": np.zeros(shape.n_labels, np.float32),
    }


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form


def predict_scores(weights: dict[str, np.ndarray], ids: np.ndarray, bag_weights: np.ndarray) -> np.ndarray:
    """The graph's maths in numpy (training-time dev checks; serving runs the exported artifact)."""
    out = []
    for start in range(0, len(ids), 1024):
        sl = slice(start, start + 1024)
        hidden = np.einsum("bl,bld->bd", bag_weights[sl], weights["embedding"][ids[sl]])
        out.append(sigmoid(hidden @ weights["dense_w"] + weights["dense_b"]))
    return np.concatenate(out) if out else np.zeros((0, weights["dense_b"].size), np.float32)


@dataclass
class _Ragged:
    """Non-padding entries of a padded [N, L] input, row by row."""

    ids: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray  # [N + 1]

    @classmethod
    def from_padded(cls, ids: np.ndarray, weights: np.ndarray) -> _Ragged:
        keep = weights != 0
        offsets = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
        return cls(ids[keep].astype(np.int64), weights[keep].astype(np.float32), offsets)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat ids, weights and segment starts of ``rows`` (and which rows are empty)."""
        starts, lengths = self.offsets[rows], np.diff(self.offsets)[rows]
        seg_starts = np.zeros(len(rows), np.int64)
        np.cumsum(lengths[:-1], out=seg_starts[1:])
        flat = np.repeat(starts - seg_starts, lengths) + np.arange(int(lengths.sum()))
        return self.ids[flat], self.weights[flat], seg_starts, lengths == 0


class _Adam:
    """Adam on a dense array, or lazily on selected rows of it."""

    def __init__(self, param: np.ndarray, lr: float) -> None:
        self.m = np.zeros_like(param)
        self.v = np.zeros_like(param)
        self.lr = lr

    def step(self, param: np.ndarray, grad: np.ndarray, t: int, rows: np.ndarray | None = None) -> None:
        sel = slice(None) if rows is None else rows
        m = self.m[sel] * _BETA1 + (1 - _BETA1) * grad
        v = self.v[sel] * _BETA2 + (1 - _BETA2) * grad * grad
        self.m[sel], self.v[sel] = m, v
        step = self.lr * np.sqrt(1 - _BETA2**t) / (1 - _BETA1**t)
        param[sel] -= (step * m / (np.sqrt(v) + _EPS)).astype(param.dtype)


def fit(
    weights: dict[str, np.ndarray],
    batch_ids: np.ndarray,
    batch_weights: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    seed: int,
    lr: float = LR,
    progress: Progress | None = None,
    batch_size: int = BATCH_SIZE,
    dropout: float = DROPOUT,
    pos_weight: np.ndarray | None = None,
) -> FitResult:
    """Train from ``weights`` (not modified) on padded ``ids``/``weights`` [N, L] and labels [N, C].

    ``labels`` are bool, or soft targets in [0, 1] (distillation). The learning rate falls
    linearly from ``lr`` to 0 over the fit (fastText's schedule); ``dropout`` drops that
    share of each text's n-grams per step; ``pos_weight`` [C] scales each label's positive
    term of the cross-entropy. ``progress``, when given, is sized to the number of steps
    and advanced per batch.
    """
    emb = weights["embedding"].copy()
    dense_w = weights["dense_w"].copy()
    dense_b = weights["dense_b"].copy()
    data = _Ragged.from_padded(np.asarray(batch_ids), np.asarray(batch_weights))
    targets = np.asarray(labels, dtype=np.float32)
    n = len(targets)
    pw = np.ones(targets.shape[1], np.float32) if pos_weight is None else np.asarray(pos_weight, np.float32)
    rng = np.random.default_rng(seed)
    opt_e, opt_w, opt_b = _Adam(emb, lr), _Adam(dense_w, lr), _Adam(dense_b, lr)
    touched = np.zeros(emb.shape[0], dtype=bool)
    n_batches = -(-n // batch_size) if n else 0
    total_steps = max(epochs * n_batches, 1)
    if progress is not None:
        progress.total = total_steps
    t = 0
    epoch_loss = float("nan")
    for epoch in range(epochs):
        order = rng.permutation(n)
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            ids, bag_w, seg, empty = data.gather(rows)
            if dropout:
                # n-gram dropout (inverted, so serving needs no rescaling): a bag regulariser
                bag_w = bag_w * ((rng.random(len(bag_w)) >= dropout) / np.float32(1 - dropout))
            y = targets[rows]
            t += 1
            for opt in (opt_e, opt_w, opt_b):
                opt.lr = lr * (1.0 - (t - 1) / total_steps)
            hidden = np.zeros((len(rows), emb.shape[1]), np.float32)
            if len(ids):
                # reduceat needs strictly increasing in-range starts: leave empty texts at 0
                hidden[~empty] = np.add.reduceat(bag_w[:, None] * emb[ids], seg[~empty], axis=0)
            logits = hidden @ dense_w + dense_b
            probs = sigmoid(logits)
            loss_sum += float(_bce(logits, y, pw).sum())
            # d/dz of -(pw*y*log p + (1-y)*log(1-p)); pw = 1 gives the usual p - y
            d_logits = (probs * (1 + (pw - 1) * y) - pw * y) / len(rows)
            d_hidden = d_logits @ dense_w.T
            opt_w.step(dense_w, hidden.T @ d_logits, t)
            opt_b.step(dense_b, d_logits.sum(axis=0), t)
            if len(ids):
                row_of = np.repeat(np.arange(len(rows)), np.diff(np.append(seg, len(ids))))
                grad = bag_w[:, None] * d_hidden[row_of]
                uniq, grad_rows = _sum_by_id(ids, grad)
                opt_e.step(emb, grad_rows, t, uniq)
                touched[uniq] = True
            if progress is not None:
                progress.update(1, epoch=epoch + 1, loss=loss_sum / min(start + batch_size, n))
        epoch_loss = loss_sum / max(n, 1)
    metrics = {"train_loss": epoch_loss, "examples": float(n), "epochs": float(epochs), "steps": float(t)}
    return FitResult({"embedding": emb, "dense_w": dense_w, "dense_b": dense_b}, metrics, np.flatnonzero(touched))


def _bce(logits: np.ndarray, y: np.ndarray, pos_weight: np.ndarray) -> np.ndarray:
    """Per-example weighted binary cross-entropy summed over labels, stable for large |logits|."""
    softplus = np.log1p(np.exp(-np.abs(logits)))
    # softplus(z) = -log(1 - p) and softplus(-z) = -log p, each in the overflow-free form
    neg, pos = np.maximum(logits, 0) + softplus, np.maximum(-logits, 0) + softplus
    return (pos_weight * y * pos + (1 - y) * neg).sum(axis=1)


def _sum_by_id(ids: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids and the summed gradient rows of each (sort + reduceat: deterministic)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    return sorted_ids[starts], np.add.reduceat(grad[order], starts, axis=0)


def tune_thresholds(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-label threshold maximising F1 on (scores, labels); candidates are the scores themselves."""
    labels = np.asarray(labels, dtype=bool)
    out = np.empty(scores.shape[1], np.float64)
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        s, y = scores[order, c], labels[order, c]
        tp = np.cumsum(y)
        k = np.arange(1, len(y) + 1)  # predicted positives when cutting after position k
        f1 = 2 * tp / (k + y.sum())
        # only cut between distinct scores so the threshold reproduces the count
        valid = np.r_[s[1:] < s[:-1], True]
        best = int(np.argmax(np.where(valid, f1, -1)))
        out[c] = float((s[best] + s[best + 1]) / 2) if best + 1 < len(s) else float(s[best]) - 1e-7
    return out


def cross_fit_f1(scores: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """Honest macro-F1: tune thresholds on one random half, apply to the other, and swap."""
    halves = np.array_split(np.random.default_rng(seed).permutation(len(scores)), 2)
    predicted = np.zeros(scores.shape, dtype=bool)
    for tune, apply in (halves, halves[::-1]):
        predicted[apply] = scores[apply] >= tune_thresholds(scores[tune], labels[tune])
    per_label = f1_per_class(labels, predicted)
    return float(per_label.mean()), per_label


def class_balance(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-label positive weights ``(neg / pos) ** power`` (0: unweighted, 0.5: the square root)."""
    pos = np.clip(np.asarray(labels, dtype=np.float64).mean(axis=0), 1e-6, 1 - 1e-6)
    return (((1 - pos) / pos) ** power).astype(np.float32)


def blend_targets(hard: np.ndarray, teacher: np.ndarray | None, hard_share: float) -> np.ndarray:
    """Distillation targets ``hard_share * hard + (1 - hard_share) * teacher`` (``hard`` without a teacher)."""
    hard = np.asarray(hard, dtype=np.float32)
    if teacher is None:
        return hard
    teacher = np.asarray(teacher, dtype=np.float32)
    if teacher.shape != hard.shape:
        raise ValueError(f"teacher scores have shape {teacher.shape}, the labels {hard.shape}")
    return (hard_share * hard + (1 - hard_share) * teacher).astype(np.float32)


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Each row's fold in 0..folds-1: a seeded permutation cut into near-equal parts."""
    fold = np.empty(n, np.int64)
    for k, rows in enumerate(np.array_split(np.random.default_rng(seed).permutation(n), folds)):
        fold[rows] = k
    return fold


def collapse(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One embedding bag computing the mean logits of several (an ensemble at a single model's cost).

    The logits are linear in the bag, ``bag @ W + b``, and the bag linear in the table, so
    ``mean_k(bag_k @ W_k + b_k)`` is the bag of the table ``mean_k(E_k @ W_k)`` [buckets, C]
    times the identity: the same graph, with C columns instead of ``dim``.
    """
    table = np.mean([m["embedding"].astype(np.float64) @ m["dense_w"] for m in members], axis=0)
    classes = table.shape[1]
    return {
        "embedding": table.astype(np.float32),
        "dense_w": np.eye(classes, dtype=np.float32),
        "dense_b": np.mean([m["dense_b"] for m in members], axis=0).astype(np.float32),
    }


def fit_members(
    shape: dict[str, Any],
    batch_ids: np.ndarray,
    batch_weights: np.ndarray,
    targets: np.ndarray,
    members: int,
    seed: int,
    progress: Progress | None = None,
    **fit_args: Any,
) -> tuple[dict[str, np.ndarray], list[FitResult]]:
    """``members`` fits that differ only in their seed (init, order, dropout), collapsed into one model."""
    results = []
    for m in range(members):
        member_seed = seed + 1000 * m
        results.append(
            fit(init_weights(shape, member_seed), batch_ids, batch_weights, targets, seed=member_seed, **fit_args)
        )
        if progress is not None:
            progress.update(1)
    return collapse([r.weights for r in results]), results


def out_of_fold_scores(
    shape: dict[str, Any],
    batch_ids: np.ndarray,
    batch_weights: np.ndarray,
    targets: np.ndarray,
    folds: int,
    members: int,
    seed: int,
    progress: Progress | None = None,
    **fit_args: Any,
) -> np.ndarray:
    """Scores of every row from a model that never saw it (K-fold), for choosing thresholds without dev.

    Each fold's model is built exactly as the final one is (``members`` collapsed fits with
    the same ``fit_args``) on the other folds, so its scores on the held fold are
    distributed as the final model's on new text, up to the (K-1)/K share of data it saw.
    """
    fold = fold_of(len(targets), folds, seed)
    scores = np.zeros(np.shape(targets), np.float32)
    for k in range(folds):
        train_rows, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        model, _ = fit_members(
            shape,
            batch_ids[train_rows],
            batch_weights[train_rows],
            targets[train_rows],
            members,
            seed + 1 + k,
            progress,
            **fit_args,
        )
        scores[held] = predict_scores(model, batch_ids[held], batch_weights[held])
    return scores
