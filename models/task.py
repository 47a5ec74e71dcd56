"""What a federated round needs from each model family, behind one small interface.

A :class:`ModelSpec` is everything but the weights (featurizer spec, labels, shape); the
server ships it to the nodes with every round, so a node needs no model files of its
own. A family's task (``models/<family>/task.py``) turns raw local examples into arrays,
trains with the family's numpy trainer, and scores weights with the family's score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

Weights = dict[str, np.ndarray]
#: examples a node keeps out of training to report local metrics on
HELD_OUT = 0.2


@dataclass(frozen=True)
class ModelSpec:
    family: str
    featurizer: dict[str, Any]
    labels: tuple[str, ...] = ()
    #: what the family's ``init_weights`` needs besides the featurizer (emotion: buckets, dim, n_labels)
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


@dataclass(frozen=True)
class SimulationData:
    """A data set ``nexus federated simulate`` partitions: raw rows, labels, and the spec of the base model."""

    spec: ModelSpec
    train: Sequence[Any]
    train_labels: np.ndarray
    #: partition key per training row (the funnel's region), if the rows carry one
    train_keys: np.ndarray | None
    eval: Sequence[Any]
    eval_labels: np.ndarray
    eval_keys: np.ndarray | None


class Task(Protocol):
    default_lr: float
    #: a node's local epochs and learning rate each round when the run does not say (run config
    #: ``local-epochs`` 0, ``lr`` 0); ``default_lr`` is the central trainer's
    federated_local_epochs: int
    federated_lr: float
    #: epochs of the simulation's central and local-only arms (the family's central default)
    central_epochs: int
    #: the simulation's defaults: partition ("region", "iid", "dirichlet:ALPHA") and federated rounds
    simulation_partition: str
    simulation_rounds: int

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights: ...

    def shape_of(self, weights: Weights, labels: Sequence[str]) -> dict[str, int]:
        """The spec's shape of a bundle's fp32 weights (a federated run starting from that bundle)."""
        ...

    def local_examples(self, store: Any, spec: ModelSpec) -> tuple[Sequence[Any], np.ndarray]:
        """The raw labelled examples of an edge's local store (``edge_worker.store.LocalStore``)."""
        ...

    def featurize(self, spec: ModelSpec, raw: Sequence[Any], labels: np.ndarray) -> Examples: ...

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]: ...

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput: ...

    def scores(self, weights: Weights, data: Examples) -> np.ndarray: ...

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
        """``loss`` and the family's score (``Family.score_name``) of scores against labels."""
        ...

    def simulation_data(self, data: Path, eval_data: Path | None) -> SimulationData: ...


def random_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a seeded HELD_OUT share of ``n`` rows held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * HELD_OUT))
    return np.sort(order[n_test:]), np.sort(order[:n_test])
