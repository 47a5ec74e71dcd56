"""``nexus models train|eval emotion``: train on train.tsv, export, tune thresholds on dev.tsv, install.

Versions: training into the default repository (the committed bundles) replaces version
"1" in place; training into any other repository (``--out``) adds the next version number.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.build import git_revision, manifest_header, staged_bundle, target_version
from models.bundle import (
    ARTIFACTS,
    BACKENDS,
    DEFAULT_REPOSITORY,
    Bundle,
    BundleError,
    sha256_file,
    verify_bundle,
    write_manifest,
)
from models.emotion import NAME
from models.emotion import train as trainer
from models.emotion.data import read_labels, read_tsv
from models.emotion.featurizer import DEFAULT_SPEC, Featurizer
from models.emotion.graphs import emotion_onnx, emotion_tflite
from models.emotion.model import EmotionPredictor, load
from models.export.onnx_graphs import save
from models.metrics import f1_per_class
from models.progress import Progress

#: thresholds are tuned on this backend's dev scores and shared by all backends
REFERENCE_BACKEND = "onnx"
#: stated max |score_backend - score_onnx| on any text; the pipeline refuses a bundle beyond it
TOLERANCE = {"onnx-int8": 1e-2, "tflite": 1e-2}
_EVAL_BATCH = 256


def export(weights: dict[str, np.ndarray], folder: Path) -> None:
    """Write the three artifacts of a bundle (fp32 ONNX, int8 ONNX, int8-table TFLite)."""
    e, w, b = weights["embedding"], weights["dense_w"], weights["dense_b"]
    save(emotion_onnx(e, w, b, int8=False), folder / ARTIFACTS["onnx"])
    save(emotion_onnx(e, w, b, int8=True), folder / ARTIFACTS["onnx-int8"])
    (folder / ARTIFACTS["tflite"]).write_bytes(emotion_tflite(e, w, b))


def predict_all(predictor: EmotionPredictor, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
    """Scores of many texts, batched by similar length so little of each batch is padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = np.zeros((len(texts), len(predictor.labels)), np.float32)
    for start in range(0, len(order), _EVAL_BATCH):
        rows = order[start : start + _EVAL_BATCH]
        scores[rows] = predictor.predict([texts[i] for i in rows])
        if progress is not None:
            progress.update(len(rows))
    return scores


def _label_f1(labels: list[str], per_label: np.ndarray) -> dict[str, float]:
    return {name: round(float(f), 4) for name, f in zip(labels, per_label)}


def _measure(
    folder: Path, texts: list[str], truth: np.ndarray, labels: list[str], seed: int
) -> tuple[np.ndarray, dict[str, Any], dict[str, float]]:
    """Thresholds tuned on dev, dev metrics of every artifact, and each one's max deviation from ONNX fp32."""
    scores = {backend: predict_all(load(folder, backend), texts) for backend in BACKENDS}
    thresholds = trainer.tune_thresholds(scores[REFERENCE_BACKEND], truth)
    metrics: dict[str, Any] = {
        "data": "dev.tsv",
        "n": len(texts),
        "thresholds_tuned_on": f"dev.tsv, {REFERENCE_BACKEND} scores",
    }
    for backend, s in scores.items():
        per_label = f1_per_class(truth, s >= thresholds)
        cross_fit, cross_per_label = trainer.cross_fit_f1(s, truth, seed)
        metrics[backend] = {
            "macro_f1": round(float(per_label.mean()), 4),
            "f1": _label_f1(labels, per_label),
            # honest estimate: thresholds tuned on one half of dev, scored on the other, swapped
            "macro_f1_cross_fit": round(cross_fit, 4),
            "f1_cross_fit": _label_f1(labels, cross_per_label),
        }
    metrics["quantization_cost_macro_f1"] = round(metrics["onnx"]["macro_f1"] - metrics["onnx-int8"]["macro_f1"], 4)
    deviation = {b: float(np.max(np.abs(scores[b] - scores[REFERENCE_BACKEND]))) for b in TOLERANCE}
    for backend, limit in TOLERANCE.items():
        if deviation[backend] > limit:
            raise BundleError(
                f"{backend} artifact deviates from {REFERENCE_BACKEND} by {deviation[backend]:.3g} > stated {limit:g}"
            )
    return thresholds, metrics, deviation


def _data_files(data: Path) -> dict[str, Any]:
    return {
        name: {"file": f"{data.name}/{name}", "sha256": sha256_file(data / name)}
        for name in ("labels.txt", "train.tsv", "dev.tsv")
    }


def train(data: Path, out: Path, seed: int = 0, show_progress: bool = True) -> Bundle:
    """Train on ``data``/train.tsv, tune thresholds on dev.tsv, write ``out/emotion/<version>/``."""
    data, out = Path(data), Path(out)
    labels = read_labels(data / "labels.txt")
    train_set = read_tsv(data / "train.tsv", len(labels))
    dev_set = read_tsv(data / "dev.tsv", len(labels))
    featurizer = Featurizer(DEFAULT_SPEC)

    started = time.monotonic()
    ids, bag_weights = featurizer.batch(train_set.texts)
    shape = {"buckets": featurizer.spec.buckets, "dim": trainer.DIM, "n_labels": len(labels)}
    progress = Progress("emotion train", trainer.EPOCHS, enabled=show_progress)
    result = trainer.fit(
        trainer.init_weights(shape, seed),
        ids,
        bag_weights,
        train_set.labels,
        epochs=trainer.EPOCHS,
        seed=seed,
        progress=progress,
    )
    progress.close()
    seconds = time.monotonic() - started

    version = target_version(out, NAME, DEFAULT_REPOSITORY)
    with staged_bundle(out, NAME, version) as staging:
        export(result.weights, staging)
        manifest: dict[str, Any] = {
            **manifest_header(NAME, version),
            "labels": labels,
            "inputs": [
                {"name": "ids", "dtype": "int64", "shape": [-1, -1]},
                {"name": "weights", "dtype": "float32", "shape": [-1, -1]},
            ],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, len(labels)]}],
            "featurizer": featurizer.spec.to_dict(),
            "architecture": shape,
            # placeholder until dev scores exist: the artifacts load only from a listed bundle
            "thresholds": {name: 0.5 for name in labels},
            "provenance": {
                "data": _data_files(data),
                "seed": seed,
                "trainer": {
                    "module": "models.emotion.train",
                    "model": f"hashed n-gram embedding bag {shape['buckets']} x {trainer.DIM} -> {len(labels)} sigmoid",
                    "optimizer": "lazy Adam on touched rows, linear lr decay to 0",
                    "epochs": trainer.EPOCHS,
                    "lr": trainer.LR,
                    "batch_size": trainer.BATCH_SIZE,
                    "ngram_dropout": trainer.DROPOUT,
                    "train_loss": round(result.metrics["train_loss"], 5),
                    "seconds": round(seconds, 1),
                },
                "git_revision": git_revision(),
            },
        }
        write_manifest(staging, manifest)
        thresholds, metrics, deviation = _measure(staging, dev_set.texts, dev_set.labels, labels, seed)
        manifest["thresholds"] = {name: float(t) for name, t in zip(labels, thresholds)}
        manifest["metrics"] = metrics
        manifest["tolerance"] = {
            "reference": REFERENCE_BACKEND,
            "max_abs_diff": TOLERANCE,
            "measured_on_dev": deviation,
        }
        write_manifest(staging, manifest)
    return verify_bundle(out / NAME / version)


def evaluate(bundle_dir: Path, data: Path, backend: str = "onnx", show_progress: bool = True) -> dict[str, Any]:
    """Macro-F1 of a bundle's exported artifact on a GoEmotions-layout TSV, with its own thresholds."""
    predictor = load(bundle_dir, backend)
    dataset = read_tsv(Path(data), len(predictor.labels))
    progress = Progress(f"emotion eval ({backend})", len(dataset.texts), enabled=show_progress)
    scores = predict_all(predictor, dataset.texts, progress)
    progress.close()
    per_label = f1_per_class(dataset.labels, scores >= predictor.thresholds)
    return {
        "model": predictor.name,
        "model_version": predictor.version,
        "backend": backend,
        "n": len(dataset.texts),
        "macro_f1": round(float(per_label.mean()), 4),
        "f1": _label_f1(predictor.labels, per_label),
    }
