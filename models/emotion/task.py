"""The emotion family's federated training task: texts -> n-gram bags -> the numpy embedding bag, scored by macro-F1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from models.emotion import NAME, SCORE_NAME
from models.emotion import data as emotion_data
from models.emotion import train as emotion_train
from models.emotion.featurizer import DEFAULT_SPEC, Featurizer
from models.metrics import log_loss
from models.task import Examples, ModelSpec, SimulationData, TrainOutput, Weights, random_split

#: embedding width of simulated emotion models
SIMULATION_DIM = 32


class FeedbackStore(Protocol):
    """The part of the edge's local store that holds labelled texts."""

    def emotion_examples(self, labels: Sequence[str]) -> tuple[list[str], np.ndarray]: ...


class EmotionTask:
    default_lr = 0.01
    #: with FedAvgM (momentum 0.5), 10 rounds of 2 local epochs at this rate bring the
    #: Dirichlet(0.5) split within 0.01 macro-F1 of central (docs/federated.md, "The gap")
    federated_local_epochs = 2
    federated_lr = 0.03
    central_epochs = 5
    simulation_partition = "dirichlet:0.5"
    simulation_rounds = 10

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights:
        return emotion_train.init_weights(spec.shape, seed)

    def shape_of(self, weights: Weights, labels: Sequence[str]) -> dict[str, int]:
        buckets, dim = weights["embedding"].shape
        return {"buckets": buckets, "dim": dim, "n_labels": len(labels)}

    def local_examples(self, store: FeedbackStore, spec: ModelSpec) -> tuple[Sequence[str], np.ndarray]:
        return store.emotion_examples(spec.labels)

    def featurize(self, spec: ModelSpec, raw: Sequence[str], labels: np.ndarray) -> Examples:
        ids, bag = Featurizer(spec.featurizer).batch(list(raw))
        return Examples((ids, bag), np.asarray(labels, dtype=bool))

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return random_split(len(labels), seed)

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput:
        # the emotion trainer has no proximal term; FedProx's mu is ignored for this family
        ids, bag = data.inputs
        result = emotion_train.fit(weights, ids, bag, data.labels, epochs=epochs, seed=seed, lr=lr)
        return TrainOutput(result.weights, float(result.metrics["train_loss"]), result.touched_rows)

    def scores(self, weights: Weights, data: Examples) -> np.ndarray:
        return emotion_train.predict_scores(weights, *data.inputs)

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
        return metrics(scores, labels, seed)

    def simulation_data(self, data: Path, eval_data: Path | None) -> SimulationData:
        labels, train, held = simulation_sets(data, eval_data)
        shape = {"buckets": int(DEFAULT_SPEC["buckets"]), "dim": SIMULATION_DIM, "n_labels": len(labels)}
        spec = ModelSpec(NAME, dict(DEFAULT_SPEC), tuple(labels), shape)
        return SimulationData(spec, train.texts, train.labels, None, held.texts, held.labels, None)


def metrics(scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """Log loss and cross-fit macro-F1 (thresholds tuned on one half, scored on the other): both emotion tiers'."""
    y = np.asarray(labels, dtype=np.float64)
    f1, _ = emotion_train.cross_fit_f1(scores, labels, seed) if len(y) >= 2 else (0.0, None)
    return {"loss": log_loss(y, scores), SCORE_NAME: f1}


def simulation_sets(
    data: Path, eval_data: Path | None
) -> tuple[list[str], emotion_data.EmotionData, emotion_data.EmotionData]:
    """Labels, train and held-out sets of a GoEmotions-layout folder (held out: ``eval_data``, else dev.tsv)."""
    labels = emotion_data.read_labels(Path(data).parent / "labels.txt")
    eval_path = eval_data if eval_data is not None else Path(data).parent / "dev.tsv"
    return labels, emotion_data.read_tsv(data, len(labels)), emotion_data.read_tsv(eval_path, len(labels))
