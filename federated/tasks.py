"""What a federated round needs from each model family, behind one small interface.

A :class:`ModelSpec` is everything but the weights (featurizer spec, labels, shape); the
server ships it to the nodes with every round, so a node needs no model files of its
own. A task turns raw local examples into arrays, trains with the family's numpy
trainer, and scores weights (ROC-AUC for the funnel, macro-F1 for emotion).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.emotion import train as emotion_train
from models.emotion.featurizer import Featurizer as EmotionFeaturizer
from models.errors import NexusError
from models.funnel import train as funnel_train
from models.funnel.data import split_indices
from models.funnel.featurizer import Featurizer as FunnelFeaturizer
from models.metrics import log_loss, roc_auc

Weights = dict[str, np.ndarray]
#: examples a node keeps out of training to report local metrics on
HELD_OUT = 0.2


@dataclass(frozen=True)
class ModelSpec:
    family: str
    featurizer: dict[str, Any]
    labels: tuple[str, ...] = ()
    #: emotion: {"buckets", "dim", "n_labels"}; funnel: {"hidden"}
    shape: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"family": self.family, "featurizer": self.featurizer, "labels": list(self.labels), "shape": self.shape},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        raw = json.loads(text)
        return cls(raw["family"], raw["featurizer"], tuple(raw.get("labels", ())), dict(raw.get("shape", {})))


@dataclass(frozen=True)
class Examples:
    """Featurised examples: the model inputs (one or more arrays) and the labels."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Examples:
        return Examples(tuple(a[rows] for a in self.inputs), self.labels[rows])


@dataclass(frozen=True)
class TrainOutput:
    weights: Weights
    loss: float
    #: embedding rows that changed (emotion); None means every array may have changed
    touched_rows: np.ndarray | None = None


class Task(Protocol):
    family: str
    score_name: str
    default_lr: float

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights: ...

    def featurize(self, spec: ModelSpec, raw: Sequence[Any], labels: np.ndarray) -> Examples: ...

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]: ...

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput: ...

    def scores(self, weights: Weights, data: Examples) -> np.ndarray: ...

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]: ...


class FunnelTask:
    family = "funnel"
    score_name = "roc_auc"
    default_lr = funnel_train.LR

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights:
        return funnel_train.init_weights(
            spec.featurizer, seed, hidden=int(spec.shape.get("hidden", funnel_train.HIDDEN))
        )

    def featurize(self, spec: ModelSpec, raw: Sequence[Any], labels: np.ndarray) -> Examples:
        X = FunnelFeaturizer.from_spec(spec.featurizer).transform(list(raw))
        return Examples((X,), np.asarray(labels, dtype=np.float32).ravel())

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if len(np.unique(labels)) < 2:
            return _random_split(len(labels), seed)
        return split_indices(labels, seed=seed, test_fraction=HELD_OUT)

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput:
        result = funnel_train.fit(weights, data.inputs[0], data.labels, epochs=epochs, seed=seed, lr=lr, mu=mu)
        return TrainOutput(result.weights, float(result.metrics["train_loss"]))

    def scores(self, weights: Weights, data: Examples) -> np.ndarray:
        return funnel_train.predict(weights, data.inputs[0])

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
        auc = roc_auc(labels, scores)
        # a node whose held-out share has one class cannot score AUC; report 0.5 (chance)
        # so weighted averages stay finite and the node's loss still counts
        return {"loss": log_loss(labels, scores), "roc_auc": auc if np.isfinite(auc) else 0.5}


class EmotionTask:
    family = "emotion"
    score_name = "macro_f1"
    default_lr = 0.01

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights:
        return emotion_train.init_weights(spec.shape, seed)

    def featurize(self, spec: ModelSpec, raw: Sequence[Any], labels: np.ndarray) -> Examples:
        ids, bag = EmotionFeaturizer(spec.featurizer).batch(list(raw))
        return Examples((ids, bag), np.asarray(labels, dtype=bool))

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return _random_split(len(labels), seed)

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput:
        # the emotion trainer has no proximal term; FedProx's mu is ignored for this family
        ids, bag = data.inputs
        result = emotion_train.fit(weights, ids, bag, data.labels, epochs=epochs, seed=seed, lr=lr)
        return TrainOutput(result.weights, float(result.metrics["train_loss"]), result.touched_rows)

    def scores(self, weights: Weights, data: Examples) -> np.ndarray:
        return emotion_train.predict_scores(weights, *data.inputs)

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
        y = np.asarray(labels, dtype=np.float64)
        f1, _ = emotion_train.cross_fit_f1(scores, labels, seed) if len(y) >= 2 else (0.0, None)
        return {"loss": log_loss(y, scores), "macro_f1": f1}


def _random_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * HELD_OUT))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


TASKS: dict[str, Task] = {"funnel": FunnelTask(), "emotion": EmotionTask()}


def task_for(family: str) -> Task:
    try:
        return TASKS[family]
    except KeyError:
        raise NexusError(f"unknown model family {family!r} (expected one of {sorted(TASKS)})") from None
