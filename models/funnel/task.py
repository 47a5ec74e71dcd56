"""The funnel's federated training task: sessions -> standardised features -> the numpy MLP, scored by ROC-AUC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.funnel import NAME, SCORE_NAME
from models.funnel import data as funnel_data
from models.funnel import train as funnel_train
from models.funnel.featurizer import Featurizer, fit_spec
from models.metrics import log_loss, roc_auc
from models.task import HELD_OUT, Examples, ModelSpec, SimulationData, TrainOutput, Weights, random_split


class OutcomeStore(Protocol):
    """The part of the edge's local store that holds funnel outcomes."""

    def funnel_examples(self) -> tuple[list[dict[str, Any]], np.ndarray]: ...


class FunnelTask:
    default_lr = funnel_train.LR
    #: with FedAvgM (momentum 0.5) over the region split: within 0.002 ROC-AUC of central (docs/federated.md)
    federated_local_epochs = 3
    federated_lr = funnel_train.LR
    central_epochs = funnel_train.EPOCHS
    simulation_partition = "region"
    simulation_rounds = 20

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights:
        return funnel_train.init_weights(
            spec.featurizer, seed, hidden=int(spec.shape.get("hidden", funnel_train.HIDDEN))
        )

    def shape_of(self, weights: Weights, labels: Sequence[str]) -> dict[str, int]:
        return {"hidden": weights["w0"].shape[1]}

    def local_examples(self, store: OutcomeStore, spec: ModelSpec) -> tuple[Sequence[Any], np.ndarray]:
        return store.funnel_examples()

    def featurize(self, spec: ModelSpec, raw: Sequence[Any], labels: np.ndarray) -> Examples:
        X = Featurizer.from_spec(spec.featurizer).transform(list(raw))
        return Examples((X,), np.asarray(labels, dtype=np.float32).ravel())

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if len(np.unique(labels)) < 2:
            return random_split(len(labels), seed)
        return funnel_data.split_indices(labels, seed=seed, test_fraction=HELD_OUT)

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput:
        result = funnel_train.fit(weights, data.inputs[0], data.labels, epochs=epochs, seed=seed, lr=lr, mu=mu)
        return TrainOutput(result.weights, float(result.metrics["train_loss"]))

    def scores(self, weights: Weights, data: Examples) -> np.ndarray:
        return funnel_train.predict(weights, data.inputs[0])

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
        auc = roc_auc(labels, scores)
        # a node whose held-out share has one class cannot score AUC; report 0.5 (chance)
        # so weighted averages stay finite and the node's loss still counts
        return {"loss": log_loss(labels, scores), SCORE_NAME: auc if np.isfinite(auc) else 0.5}

    def simulation_data(self, data: Path, eval_data: Path | None) -> SimulationData:
        sessions = funnel_data.read_sessions(data)
        if eval_data is None or funnel_data.resolve(eval_data).resolve() == sessions.path.resolve():
            # one file: score on the project's fixed held-out split of it
            train_idx, test_idx = funnel_data.split_indices(sessions.labels)
            train = [sessions.sessions[i] for i in train_idx]
            held = [sessions.sessions[i] for i in test_idx]
            y_train, y_eval = sessions.labels[train_idx], sessions.labels[test_idx]
        else:
            other = funnel_data.read_sessions(eval_data)
            train, held, y_train, y_eval = sessions.sessions, other.sessions, sessions.labels, other.labels
        # the featurizer statistics play the part of the base model every node starts from
        spec = ModelSpec(NAME, fit_spec(train), ("purchase",), {"hidden": funnel_train.HIDDEN})
        return SimulationData(spec, train, y_train, _regions(train), held, y_eval, _regions(held))


def _regions(sessions: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.asarray([str(s["Region"]) for s in sessions])
