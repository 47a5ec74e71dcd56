"""``nexus models train|eval emotion``: train on train.tsv, export, score dev.tsv, install (the fast tier).

Thresholds come from out-of-fold scores on train.tsv (K-fold cross-fitting), never from
dev.tsv, so the dev figures in the manifest are honest estimates of new text. With a
teacher (the accurate tier's scores of train.tsv) the targets are a blend of the hard
labels and the teacher's probabilities (distillation).

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
from models.emotion.model import load
from models.errors import DataError
from models.export.onnx_graphs import save
from models.metrics import f1_per_class
from models.predictor import LabelledPredictor
from models.progress import Progress

#: the backend the others are compared with (tolerance); thresholds are shared by all backends
REFERENCE_BACKEND = "onnx"
#: stated max |score_backend - score_onnx| on any text; the pipeline refuses a bundle beyond it
TOLERANCE = {"onnx-int8": 1e-2, "tflite": 1e-2}
_EVAL_BATCH = 256


def export(weights: dict[str, np.ndarray], folder: Path, base: Path | None = None) -> None:
    """Write the three artifacts of a bundle (fp32 ONNX, int8 ONNX, int8-table TFLite); ``base``: unused."""
    e, w, b = weights["embedding"], weights["dense_w"], weights["dense_b"]
    save(emotion_onnx(e, w, b, int8=False), folder / ARTIFACTS["onnx"])
    save(emotion_onnx(e, w, b, int8=True), folder / ARTIFACTS["onnx-int8"])
    (folder / ARTIFACTS["tflite"]).write_bytes(emotion_tflite(e, w, b))


def predict_all(predictor: LabelledPredictor, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
    """Scores of many texts, batched by similar length so little of each batch is padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = np.zeros((len(texts), len(predictor.labels)), np.float32)
    for start in range(0, len(order), _EVAL_BATCH):
        rows = order[start : start + _EVAL_BATCH]
        scores[rows] = predictor.predict([texts[i] for i in rows])
        if progress is not None:
            progress.update(len(rows))
    return scores


def label_f1(labels: list[str], per_label: np.ndarray) -> dict[str, float]:
    return {name: round(float(f), 4) for name, f in zip(labels, per_label)}


def _measure(
    folder: Path, thresholds: np.ndarray, texts: list[str], truth: np.ndarray, labels: list[str], seed: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Dev metrics of every artifact at the train-chosen ``thresholds``, and each one's max deviation from ONNX fp32."""
    scores = {backend: predict_all(load(folder, backend), texts) for backend in BACKENDS}
    metrics: dict[str, Any] = {
        "data": "dev.tsv",
        "n": len(texts),
        "thresholds_tuned_on": f"train.tsv out-of-fold scores ({trainer.FOLDS} folds); dev.tsv is only scored",
    }
    for backend, s in scores.items():
        per_label = f1_per_class(truth, s >= thresholds)
        cross_fit, cross_per_label = trainer.cross_fit_f1(s, truth, seed)
        metrics[backend] = {
            "macro_f1": round(float(per_label.mean()), 4),
            "f1": label_f1(labels, per_label),
            # a second estimate: thresholds tuned on one half of dev, scored on the other, swapped
            "macro_f1_cross_fit": round(cross_fit, 4),
            "f1_cross_fit": label_f1(labels, cross_per_label),
        }
    metrics["quantization_cost_macro_f1"] = round(metrics["onnx"]["macro_f1"] - metrics["onnx-int8"]["macro_f1"], 4)
    deviation = {b: float(np.max(np.abs(scores[b] - scores[REFERENCE_BACKEND]))) for b in TOLERANCE}
    for backend, limit in TOLERANCE.items():
        if deviation[backend] > limit:
            raise BundleError(
                f"{backend} artifact deviates from {REFERENCE_BACKEND} by {deviation[backend]:.3g} > stated {limit:g}"
            )
    return metrics, deviation


def read_teacher(path: Path, n_rows: int, n_labels: int) -> np.ndarray:
    """The teacher's float32 [N_train, C] sigmoid scores (``scores`` in an .npz), in train.tsv row order."""
    try:
        with np.load(Path(path)) as archive:
            scores = np.asarray(archive["scores"], dtype=np.float32)
    except FileNotFoundError:
        raise DataError(f"{path}: no such teacher file") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not an .npz with a 'scores' array ({exc})") from None
    if scores.shape != (n_rows, n_labels):
        raise DataError(f"{path}: teacher scores have shape {scores.shape}, train.tsv needs ({n_rows}, {n_labels})")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise DataError(f"{path}: teacher scores must be probabilities in [0, 1]")
    return scores


def _data_files(data: Path) -> dict[str, Any]:
    return {
        name: {"file": f"{data.name}/{name}", "sha256": sha256_file(data / name)}
        for name in ("labels.txt", "train.tsv", "dev.tsv")
    }


def train(data: Path, out: Path, seed: int = 0, show_progress: bool = True, teacher: Path | None = None) -> Bundle:
    """Train on ``data``/train.tsv (distilled from ``teacher`` scores when given), write ``out/emotion/<version>/``.

    Thresholds: K-fold models trained as the final one is score each train row they never
    saw, and each label's threshold maximises F1 on those out-of-fold scores. dev.tsv is
    only scored.
    """
    data, out = Path(data), Path(out)
    labels = read_labels(data / "labels.txt")
    train_set = read_tsv(data / "train.tsv", len(labels))
    dev_set = read_tsv(data / "dev.tsv", len(labels))
    featurizer = Featurizer(DEFAULT_SPEC)
    teacher_scores = None if teacher is None else read_teacher(teacher, len(train_set.texts), len(labels))

    started = time.monotonic()
    ids, bag_weights = featurizer.batch(train_set.texts)
    shape = {"buckets": featurizer.spec.buckets, "dim": trainer.DIM, "n_labels": len(labels)}
    targets = trainer.blend_targets(train_set.labels, teacher_scores, trainer.HARD_SHARE)
    fit_args: dict[str, Any] = {
        "epochs": trainer.EPOCHS,
        "lr": trainer.LR,
        "dropout": trainer.CENTRAL_DROPOUT if teacher is None else trainer.DISTILLED_DROPOUT,
        "pos_weight": trainer.class_balance(train_set.labels, trainer.POS_WEIGHT_POWER),
    }
    # progress counts fits: FOLDS x MEMBERS for the thresholds, then MEMBERS for the shipped model
    progress = Progress("emotion train (fits)", (trainer.FOLDS + 1) * trainer.MEMBERS, enabled=show_progress)
    held_out = trainer.out_of_fold_scores(
        shape, ids, bag_weights, targets, trainer.FOLDS, trainer.MEMBERS, seed, progress, **fit_args
    )
    thresholds = trainer.tune_thresholds(held_out, train_set.labels)
    # honest train-internal estimate: thresholds tuned on half the out-of-fold rows, applied to the rest
    oof_f1, _ = trainer.cross_fit_f1(held_out, train_set.labels, seed)
    model, members = trainer.fit_members(shape, ids, bag_weights, targets, trainer.MEMBERS, seed, progress, **fit_args)
    progress.close()
    seconds = time.monotonic() - started

    version = target_version(out, NAME, DEFAULT_REPOSITORY)
    with staged_bundle(out, NAME, version) as staging:
        export(model, staging)
        manifest: dict[str, Any] = {
            **manifest_header(NAME, version),
            "tier": "fast",
            "labels": labels,
            "inputs": [
                {"name": "ids", "dtype": "int64", "shape": [-1, -1]},
                {"name": "weights", "dtype": "float32", "shape": [-1, -1]},
            ],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": [-1, len(labels)]}],
            "featurizer": featurizer.spec.to_dict(),
            # the shipped table is the members' collapse: [buckets, labels] with an identity dense layer
            "architecture": {**shape, "dim": int(model["embedding"].shape[1])},
            "thresholds": {name: float(t) for name, t in zip(labels, thresholds)},
            "provenance": {
                "data": _data_files(data),
                "seed": seed,
                "trainer": {
                    "module": "models.emotion.train",
                    "model": (
                        f"hashed n-gram embedding bag {shape['buckets']} x {trainer.DIM} -> {len(labels)} sigmoid,"
                        f" {trainer.MEMBERS} seeds collapsed into one {shape['buckets']} x {len(labels)} table"
                    ),
                    "members": trainer.MEMBERS,
                    "optimizer": "lazy Adam on touched rows, linear lr decay to 0",
                    "loss": f"binary cross-entropy, positive term weighted (neg/pos)^{trainer.POS_WEIGHT_POWER:g}",
                    "epochs": trainer.EPOCHS,
                    "lr": trainer.LR,
                    "batch_size": trainer.BATCH_SIZE,
                    "ngram_dropout": fit_args["dropout"],
                    "pos_weight": [round(float(w), 4) for w in fit_args["pos_weight"]],
                    "threshold_folds": trainer.FOLDS,
                    "train_out_of_fold_macro_f1_cross_fit": round(oof_f1, 4),
                    "train_loss": [round(m.metrics["train_loss"], 5) for m in members],
                    "seconds": round(seconds, 1),
                },
                "teacher": _teacher_record(teacher),
                "git_revision": git_revision(),
            },
        }
        write_manifest(staging, manifest)
        metrics, deviation = _measure(staging, thresholds, dev_set.texts, dev_set.labels, labels, seed)
        manifest["metrics"] = metrics
        manifest["tolerance"] = {
            "reference": REFERENCE_BACKEND,
            "max_abs_diff": TOLERANCE,
            "measured_on_dev": deviation,
        }
        write_manifest(staging, manifest)
    return verify_bundle(out / NAME / version)


def _teacher_record(teacher: Path | None) -> dict[str, Any] | None:
    """Which scores the targets were distilled from, and with what share of the hard labels."""
    if teacher is None:
        return None
    record: dict[str, Any] = {
        "file": Path(teacher).name,
        "sha256": sha256_file(Path(teacher)),
        "hard_share": trainer.HARD_SHARE,
        "targets": "hard_share * labels + (1 - hard_share) * teacher sigmoid scores",
    }
    with np.load(Path(teacher)) as archive:
        # a teacher file written from a bundle names it (bundle_version, bundle_sha256, model)
        for key in ("model", "bundle_version", "bundle_sha256"):
            if key in archive.files and archive[key].ndim == 0 and archive[key].dtype.kind == "U":
                record[key] = str(archive[key])
    return record


def evaluate(bundle_dir: Path, data: Path, backend: str = "onnx", show_progress: bool = True) -> dict[str, Any]:
    """Macro-F1 of a bundle's exported artifact on a GoEmotions-layout TSV, with its own thresholds."""
    return evaluation(load(bundle_dir, backend), Path(data), show_progress)


def evaluation(predictor: LabelledPredictor, data: Path, show_progress: bool, **extra: Any) -> dict[str, Any]:
    """The ``nexus models eval`` report of either emotion tier's loaded artifact on ``data``
    (``extra`` fields follow the model's version)."""
    dataset = read_tsv(Path(data), len(predictor.labels))
    progress = Progress(f"{predictor.name} eval ({predictor.backend})", len(dataset.texts), enabled=show_progress)
    scores = predict_all(predictor, dataset.texts, progress)
    progress.close()
    per_label = f1_per_class(dataset.labels, scores >= predictor.thresholds)
    return {
        "model": predictor.name,
        "model_version": predictor.version,
        **extra,
        "backend": predictor.backend,
        "n": len(dataset.texts),
        "macro_f1": round(float(per_label.mean()), 4),
        "f1": label_f1(predictor.labels, per_label),
    }
