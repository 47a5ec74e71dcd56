"""``nexus models train|eval funnel``: train on the training split, export, measure, install."""

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
from models.export.onnx_graphs import save
from models.funnel import NAME
from models.funnel import train as trainer
from models.funnel.data import read_sessions, split_description, split_indices
from models.funnel.featurizer import Featurizer, fit_spec
from models.funnel.graphs import funnel_onnx, funnel_tflite
from models.funnel.model import INPUT, OUTPUT, load
from models.metrics import log_loss, roc_auc
from models.predictor import Predictor
from models.progress import Progress

REFERENCE_BACKEND = "onnx"
#: stated max |P_backend - P_onnx| on any session; the pipeline refuses a bundle beyond it
TOLERANCE = {"onnx-int8": 2e-2, "tflite": 1e-5}
_EVAL_BATCH = 1024


def export(weights: dict[str, np.ndarray], folder: Path, base: Path | None = None) -> None:
    """Write the three artifacts of a bundle (fp32 ONNX, int8 ONNX, TFLite) from MLP weights; ``base``: unused."""
    layers = [(weights[f"w{i}"], weights[f"b{i}"]) for i in range(len(weights) // 2)]
    save(funnel_onnx(layers, int8=False), folder / ARTIFACTS["onnx"])
    save(funnel_onnx(layers, int8=True), folder / ARTIFACTS["onnx-int8"])
    (folder / ARTIFACTS["tflite"]).write_bytes(funnel_tflite(layers))


def _predict(predictor: Predictor, sessions: Sequence[dict[str, Any]], progress: Progress | None = None) -> np.ndarray:
    parts = []
    for start in range(0, len(sessions), _EVAL_BATCH):
        batch = sessions[start : start + _EVAL_BATCH]
        parts.append(predictor.predict(batch))
        if progress is not None:
            progress.update(len(batch))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _measure(
    folder: Path, sessions: list[dict[str, Any]], labels: np.ndarray
) -> tuple[dict[str, Any], dict[str, float]]:
    """Held-out metrics of every exported artifact, and each one's max deviation from ONNX fp32."""
    probs = {backend: _predict(load(folder, backend), sessions) for backend in BACKENDS}
    metrics = {
        b: {"roc_auc": roc_auc(labels, p), "log_loss": log_loss(labels, p), "n": int(len(labels))}
        for b, p in probs.items()
    }
    deviation = {b: float(np.max(np.abs(probs[b] - probs[REFERENCE_BACKEND]))) for b in TOLERANCE}
    for backend, limit in TOLERANCE.items():
        if deviation[backend] > limit:
            raise BundleError(
                f"{backend} artifact deviates from {REFERENCE_BACKEND} by {deviation[backend]:.3g} > stated {limit:g}"
            )
    return metrics, deviation


def train(data: Path, out: Path, seed: int = 0, show_progress: bool = True) -> Bundle:
    """Train on the training split of ``data``, export all backends, write ``out/funnel/<version>/``."""
    dataset = read_sessions(data)
    train_idx, test_idx = split_indices(dataset.labels)
    train_sessions = [dataset.sessions[i] for i in train_idx]
    test_sessions = [dataset.sessions[i] for i in test_idx]
    spec = fit_spec(train_sessions)
    featurizer = Featurizer.from_spec(spec)
    x_train = featurizer.transform(train_sessions)
    y_train, y_test = dataset.labels[train_idx], dataset.labels[test_idx]

    progress = Progress("funnel train", trainer.EPOCHS, enabled=show_progress)
    started = time.monotonic()
    result = trainer.fit(
        trainer.init_weights(spec, seed), x_train, y_train, epochs=trainer.EPOCHS, seed=seed, progress=progress
    )
    seconds = time.monotonic() - started
    progress.close()

    out = Path(out)
    version = target_version(out, NAME, DEFAULT_REPOSITORY)
    with staged_bundle(out, NAME, version) as staging:
        export(result.weights, staging)
        manifest: dict[str, Any] = {
            **manifest_header(NAME, version),
            "labels": ["purchase"],
            "inputs": [{"name": INPUT, "dtype": "float32", "shape": [-1, featurizer.n_features]}],
            "outputs": [{"name": OUTPUT, "dtype": "float32", "shape": [-1, 1]}],
            "featurizer": spec,
            "provenance": {
                "data": {
                    "file": f"{dataset.path.parent.name}/{dataset.path.name}",
                    "sha256": sha256_file(dataset.path),
                    "rows": len(dataset.sessions),
                },
                "split": {
                    **split_description(),
                    "train_rows": int(train_idx.size),
                    "held_out_rows": int(test_idx.size),
                },
                "seed": seed,
                "trainer": {
                    "module": "models.funnel.train",
                    "model": f"MLP {featurizer.n_features} -> {trainer.HIDDEN} ReLU -> 1 sigmoid",
                    "optimizer": "Adam",
                    "epochs": trainer.EPOCHS,
                    "lr": trainer.LR,
                    "batch_size": trainer.BATCH_SIZE,
                    "l2": trainer.L2,
                    "train_loss": result.metrics["train_loss"],
                    "seconds": round(seconds, 3),
                },
                "git_revision": git_revision(),
            },
        }
        # The artifacts can only be loaded once the manifest lists them: write it, measure, rewrite.
        write_manifest(staging, manifest)
        metrics, deviation = _measure(staging, test_sessions, y_test)
        manifest["metrics"] = {"held_out": metrics}
        manifest["tolerance"] = {
            "reference": REFERENCE_BACKEND,
            "max_abs_diff": TOLERANCE,
            "measured_on_held_out": deviation,
        }
        write_manifest(staging, manifest)
    return verify_bundle(out / NAME / version)


def evaluate(bundle_dir: Path, data: Path, backend: str = "onnx", show_progress: bool = True) -> dict[str, Any]:
    """Score every row of ``data`` with the bundle's exported ``backend`` artifact."""
    dataset = read_sessions(data)
    predictor = load(bundle_dir, backend)
    progress = Progress(f"funnel eval ({backend})", len(dataset.sessions), enabled=show_progress)
    probs = _predict(predictor, dataset.sessions, progress)
    progress.close()
    return {
        "model": predictor.name,
        "model_version": predictor.version,
        "backend": backend,
        "n": int(len(dataset.labels)),
        "roc_auc": roc_auc(dataset.labels, probs),
        "log_loss": log_loss(dataset.labels, probs),
    }
