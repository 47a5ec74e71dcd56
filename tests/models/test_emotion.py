"""Emotion family: featurizer, data reader, numpy trainer, pipeline + export parity, shipped bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nexus_cli
from models.build import target_version
from models.bundle import BACKENDS, DEFAULT_REPOSITORY, verify_bundle
from models.emotion import pipeline, train
from models.emotion.data import read_labels, read_tsv
from models.emotion.featurizer import DEFAULT_SPEC, Featurizer, bucket_of, padded_length
from models.errors import DataError, NexusError
from models.families import load_predictor
from tests.support.env import shared_data

LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
CUES = {
    0: ["furious", "rage", "angry"],
    1: ["gross", "disgusting", "yuck"],
    2: ["scared", "afraid", "terrified"],
    3: ["love", "great", "happy"],
    5: ["sad", "miss", "cry"],
    6: ["wow", "surprised", "shocked"],
}
FILLER = ["the", "movie", "was", "today", "and", "my", "friend", "said", "it", "really", "so", "this"]
SMALL = {**DEFAULT_SPEC, "buckets": 1 << 12}
SMALL_SHAPE = {"buckets": 1 << 12, "dim": 8, "n_labels": len(LABELS)}


def synthetic_rows(n: int, seed: int) -> list[tuple[str, list[int]]]:
    """Texts whose labels follow cue words; no cue means neutral (4)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        labels = sorted({int(c) for c in rng.choice(list(CUES), size=int(rng.integers(0, 3)))})
        for label in labels:
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(CUES[label])))
        rows.append((" ".join(words).capitalize() + str(rng.choice(["", "!", "."])), labels or [4]))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, list[int]]]) -> Path:
    path.write_text("".join(f"{text}\t{','.join(map(str, ids))}\tc{i}\n" for i, (text, ids) in enumerate(rows)))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("goemotions-synthetic")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    write_tsv(folder / "train.tsv", synthetic_rows(3000, seed=1))
    write_tsv(folder / "dev.tsv", synthetic_rows(200, seed=2))
    return folder


@pytest.fixture(scope="module")
def trained_repo(data_dir, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    pipeline.train(data_dir, repo, seed=0, show_progress=False)
    return repo


@pytest.fixture(scope="module")
def train_arrays(data_dir):
    dataset = read_tsv(data_dir / "train.tsv", len(LABELS))
    ids, weights = Featurizer(SMALL).batch(dataset.texts[:600])
    return ids, weights, dataset.labels[:600]


# --- featurizer ---------------------------------------------------------------------


def test_hash_has_fixed_test_vectors():
    # BLAKE2b-64 little-endian of kind \x1f gram, masked to 2^17: pinned so any change shows
    assert bucket_of("w", "hello", 1 << 17) == 6221
    assert bucket_of("c", "<he", 1 << 17) == 48443
    assert bucket_of("w", "i love", 1 << 17) == 3233


def test_featurizer_ids_are_pinned_and_stable_across_processes():
    expected = [96808, 104492, 22430, 5962, 90682, 118124, 13251, 71735, 47867, 35556, 94952]
    ids, weights = Featurizer(DEFAULT_SPEC).features("I love it!")
    assert ids[: len(expected)].tolist() == expected
    assert np.allclose(weights, 1 / np.sqrt(len(ids)))
    code = (
        "from models.emotion.featurizer import *; "
        "print(Featurizer(DEFAULT_SPEC).features('Ça va? 😂 I love it!')[0].tolist())"
    )
    # a fresh interpreter gets another PYTHONHASHSEED: ids must not depend on hash()
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    assert json.loads(runs[0]) == Featurizer(DEFAULT_SPEC).features("Ça va? 😂 I love it!")[0].tolist()


def test_normalisation_tokens_and_padding():
    featurizer = Featurizer(DEFAULT_SPEC)
    assert featurizer.tokens("ＨＥＬＬＯ, I don't ﬁne😂") == ["hello", ",", "i", "don't", "fine", "😂"]
    assert featurizer.features("Hello")[0].tolist() == featurizer.features("ＨＥＬＬＯ")[0].tolist()
    ids, weights = featurizer.batch(["", "one two three four five six seven eight nine ten"])
    assert ids.shape == weights.shape and ids.dtype == np.int64 and weights.dtype == np.float32
    assert ids.shape[1] == padded_length(
        len(featurizer.features("one two three four five six seven eight nine ten")[0]), 16
    )
    assert ids.shape[1] & (ids.shape[1] - 1) == 0
    assert not weights[0].any() and not ids[0].any()
    long_ids, _ = featurizer.features("word " * 1000 + "x" * 10_000)
    assert len(long_ids) == DEFAULT_SPEC["max_ids"]
    assert ids.max() < DEFAULT_SPEC["buckets"]


def test_malformed_spec_is_a_nexus_error():
    with pytest.raises(NexusError, match="power of two"):
        Featurizer({**DEFAULT_SPEC, "buckets": 1000})
    with pytest.raises(NexusError, match="malformed"):
        Featurizer({k: v for k, v in DEFAULT_SPEC.items() if k != "hash"})


# --- data reader ----------------------------------------------------------------------


def test_reader_reads_multi_labels(tmp_path):
    data = read_tsv(write_tsv(tmp_path / "d.tsv", [("so happy", [3]), ("wow, scary", [2, 6])]), len(LABELS))
    assert data.texts == ["so happy", "wow, scary"]
    assert data.labels.tolist() == [
        [False, False, False, True, False, False, False],
        [False, False, True, False, False, False, True],
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("only text\n", r"d\.tsv:1: expected 3 tab-separated fields"),
        ("ok\t3\ta\nbad\t9\tb\n", r"d\.tsv:2: unknown label id 9"),
        ("ok\tjoy\ta\n", r"d\.tsv:1: label ids must be comma-separated integers"),
        ("", r"no rows"),
    ],
)
def test_reader_errors_are_one_line(tmp_path, content, message):
    (tmp_path / "d.tsv").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_tsv(tmp_path / "d.tsv", len(LABELS))
    assert "\n" not in str(info.value)


def test_reader_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_tsv(tmp_path / "absent.tsv", 7)
    with pytest.raises(DataError, match="no such file"):
        read_labels(tmp_path / "labels.txt")
    with pytest.raises(DataError, match="is a folder"):
        read_tsv(tmp_path, 7)


# --- training -------------------------------------------------------------------------


def test_training_is_bit_identical_for_a_seed_and_learns(train_arrays):
    ids, weights, labels = train_arrays
    runs = [
        train.fit(train.init_weights(SMALL_SHAPE, 3), ids, weights, labels, epochs=10, seed=7, lr=0.1) for _ in range(2)
    ]
    for name in ("embedding", "dense_w", "dense_b"):
        assert np.array_equal(runs[0].weights[name], runs[1].weights[name])
    other = train.fit(train.init_weights(SMALL_SHAPE, 3), ids, weights, labels, epochs=10, seed=8, lr=0.1)
    assert not np.array_equal(other.weights["embedding"], runs[0].weights["embedding"])
    scores = train.predict_scores(runs[0].weights, ids, weights)
    assert train.cross_fit_f1(scores, labels, seed=0)[0] > 0.8


def test_fit_starts_from_the_given_weights_and_reports_touched_rows(train_arrays):
    ids, weights, labels = train_arrays
    start = train.fit(train.init_weights(SMALL_SHAPE, 0), ids, weights, labels, epochs=2, seed=0, lr=0.02).weights
    snapshot = {k: v.copy() for k, v in start.items()}
    half = len(labels) // 2
    result = train.fit(start, ids[:half], weights[:half], labels[:half], epochs=1, seed=1, lr=0.001)
    for name in snapshot:  # the input is not mutated
        assert np.array_equal(start[name], snapshot[name])
    used = np.unique(ids[:half][weights[:half] != 0])
    assert result.touched_rows.tolist() == used.tolist()
    untouched = np.setdiff1d(np.arange(SMALL_SHAPE["buckets"]), used)
    assert np.array_equal(result.weights["embedding"][untouched], start["embedding"][untouched])
    # a small step from trained weights stays close to them, far from a fresh start
    moved = np.abs(result.weights["dense_w"] - start["dense_w"]).max()
    assert 0 < moved < np.abs(start["dense_w"]).max()
    assert result.metrics["examples"] == half
    unchanged = train.fit(start, ids, weights, labels, epochs=0, seed=0)
    assert all(np.array_equal(unchanged.weights[k], start[k]) for k in start)


def test_thresholds_maximise_f1_on_the_tuning_data():
    rng = np.random.default_rng(0)
    truth = rng.random((400, 3)) < 0.2
    scores = np.clip(truth * 0.3 + rng.random((400, 3)) * 0.8, 0, 1).astype(np.float32)
    thresholds = train.tune_thresholds(scores, truth)
    best = [
        max(
            2 * (truth[:, c] & (scores[:, c] >= t)).sum() / ((scores[:, c] >= t).sum() + truth[:, c].sum())
            for t in scores[:, c]
        )
        for c in range(3)
    ]
    got = [
        2
        * (truth[:, c] & (scores[:, c] >= thresholds[c])).sum()
        / ((scores[:, c] >= thresholds[c]).sum() + truth[:, c].sum())
        for c in range(3)
    ]
    assert np.allclose(got, best)


def test_collapsed_members_score_the_mean_logits_in_the_same_graph(train_arrays):
    ids, weights, labels = train_arrays
    model, members = train.fit_members(SMALL_SHAPE, ids, weights, labels, 3, seed=0, epochs=2, lr=0.05)
    assert model["embedding"].shape == (SMALL_SHAPE["buckets"], len(LABELS))
    assert np.array_equal(model["dense_w"], np.eye(len(LABELS), dtype=np.float32))
    logits = [train.predict_scores(m.weights, ids, weights) for m in members]
    mean_logit = np.mean([np.log(s) - np.log1p(-s) for s in logits], axis=0)
    assert np.allclose(train.predict_scores(model, ids, weights), train.sigmoid(mean_logit), atol=1e-5)
    # members differ only in their seeds
    assert not np.array_equal(members[0].weights["embedding"], members[1].weights["embedding"])


def test_pos_weight_scales_the_positive_gradient(train_arrays):
    ids, weights, labels = train_arrays
    balance = train.class_balance(labels, 0.5)
    rate = labels.mean(axis=0)
    assert np.allclose(balance, np.sqrt((1 - rate) / rate), rtol=1e-5)
    assert np.allclose(train.class_balance(labels, 0.0), 1.0)
    start = train.init_weights(SMALL_SHAPE, 0)
    plain = train.predict_scores(
        train.fit(start, ids, weights, labels, epochs=3, seed=0, lr=0.05).weights, ids, weights
    )
    heavy = train.fit(start, ids, weights, labels, epochs=3, seed=0, lr=0.05, pos_weight=np.full(len(LABELS), 4.0))
    # positives weigh 4x: every label's mean score rises
    assert (train.predict_scores(heavy.weights, ids, weights).mean(axis=0) > plain.mean(axis=0)).all()


def test_out_of_fold_scores_come_from_models_that_did_not_see_the_row(train_arrays):
    ids, weights, labels = train_arrays
    folds = train.fold_of(len(labels), 3, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [200, 200, 200]
    scores = train.out_of_fold_scores(SMALL_SHAPE, ids, weights, labels, 3, 1, seed=0, epochs=10, lr=0.1)
    held = folds == 0
    model, _ = train.fit_members(SMALL_SHAPE, ids[~held], weights[~held], labels[~held], 1, seed=1, epochs=10, lr=0.1)
    assert np.allclose(scores[held], train.predict_scores(model, ids[held], weights[held]), atol=1e-6)
    assert train.cross_fit_f1(scores, labels, seed=0)[0] > 0.7  # held-out rows are still learnt


def test_distillation_targets_blend_labels_and_teacher(tmp_path):
    hard = np.array([[1, 0], [0, 1]], bool)
    teacher = np.array([[0.8, 0.4], [0.2, 0.6]], np.float32)
    assert np.allclose(train.blend_targets(hard, teacher, 0.25), [[0.85, 0.3], [0.15, 0.7]])
    assert train.blend_targets(hard, None, 0.25).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    np.savez(tmp_path / "t.npz", scores=teacher)
    assert np.array_equal(pipeline.read_teacher(tmp_path / "t.npz", 2, 2), teacher)
    with pytest.raises(DataError, match=r"shape \(2, 2\), train.tsv needs \(3, 2\)"):
        pipeline.read_teacher(tmp_path / "t.npz", 3, 2)
    np.savez(tmp_path / "bad.npz", scores=teacher * 2)
    with pytest.raises(DataError, match="probabilities"):
        pipeline.read_teacher(tmp_path / "bad.npz", 2, 2)
    with pytest.raises(DataError, match="no such teacher file"):
        pipeline.read_teacher(tmp_path / "absent.npz", 2, 2)
    np.savez(tmp_path / "other.npz", logits=teacher)
    with pytest.raises(DataError, match="'scores' array"):
        pipeline.read_teacher(tmp_path / "other.npz", 2, 2)


# --- pipeline, export, CLI ------------------------------------------------------------


def test_pipeline_writes_a_complete_bundle_whose_backends_agree(trained_repo, data_dir):
    bundle = verify_bundle(trained_repo / "emotion" / "1")
    manifest = bundle.manifest
    assert manifest["family"] == "emotion" and manifest["parent_version"] is None
    assert manifest["labels"] == LABELS and set(manifest["thresholds"]) == set(LABELS)
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx", "model.tflite"}
    assert Featurizer(manifest["featurizer"]).spec == Featurizer(DEFAULT_SPEC).spec
    assert manifest["provenance"]["data"]["train.tsv"]["sha256"]
    for backend in BACKENDS:
        assert manifest["metrics"][backend]["macro_f1"] > 0.8
        assert 0 <= manifest["metrics"][backend]["macro_f1_cross_fit"] <= 1
    texts = read_tsv(data_dir / "dev.tsv", len(LABELS)).texts[:64] + ["", "?" * 3000]
    scores = {b: load_predictor(bundle.path, b).predict(texts) for b in BACKENDS}
    for backend, limit in manifest["tolerance"]["max_abs_diff"].items():
        assert np.abs(scores[backend] - scores["onnx"]).max() <= limit
    # TFLite and int8 ONNX run the same int8 table: they agree far more closely
    assert np.abs(scores["tflite"] - scores["onnx-int8"]).max() < 1e-4
    predictor = load_predictor(bundle.path, "onnx-int8")
    assert predictor.labels == LABELS and predictor.thresholds.shape == (len(LABELS),)
    assert predictor.predict([]).shape == (0, len(LABELS))


def test_thresholds_come_from_train_folds_and_a_teacher_is_recorded(trained_repo, data_dir, tmp_path):
    manifest = verify_bundle(trained_repo / "emotion" / "1").manifest
    assert manifest["tier"] == "fast" and "dev.tsv is only scored" in manifest["metrics"]["thresholds_tuned_on"]
    assert "out-of-fold" in manifest["metrics"]["thresholds_tuned_on"]
    trainer = manifest["provenance"]["trainer"]
    assert trainer["threshold_folds"] == train.FOLDS and trainer["members"] == train.MEMBERS
    assert manifest["provenance"]["teacher"] is None
    # the collapsed table: one column per label, an identity dense layer
    assert manifest["architecture"]["dim"] == len(LABELS)
    rows = read_tsv(data_dir / "train.tsv", len(LABELS))
    teacher = np.clip(rows.labels * 0.7 + 0.1, 0, 1).astype(np.float32)
    np.savez(tmp_path / "teacher.npz", scores=teacher, bundle_version=np.array("7"))
    distilled = pipeline.train(
        data_dir, tmp_path / "repo", seed=0, show_progress=False, teacher=tmp_path / "teacher.npz"
    )
    record = distilled.manifest["provenance"]["teacher"]
    assert record["file"] == "teacher.npz" and record["bundle_version"] == "7"
    assert record["hard_share"] == train.HARD_SHARE and len(record["sha256"]) == 64
    assert distilled.manifest["metrics"]["onnx"]["macro_f1"] > 0.8


def test_retraining_into_another_repository_takes_the_next_version(trained_repo, data_dir):
    assert target_version(trained_repo, "emotion", DEFAULT_REPOSITORY) == "2"
    assert target_version(DEFAULT_REPOSITORY, "emotion", DEFAULT_REPOSITORY) == "1"


def test_eval_cli_on_a_bundle_and_on_a_tampered_copy(trained_repo, data_dir, tmp_path):
    bundle_dir = trained_repo / "emotion" / "1"
    args = [
        sys.executable,
        "-m",
        "nexus_cli",
        "models",
        "eval",
        "emotion",
        "--data",
        str(data_dir / "dev.tsv"),
        "--json",
    ]
    done = subprocess.run([*args, "--bundle", str(bundle_dir), "--backend", "tflite"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n"] == 200 and result["backend"] == "tflite" and result["model_version"] == "1"
    assert result["macro_f1"] == pytest.approx(
        verify_bundle(bundle_dir).manifest["metrics"]["tflite"]["macro_f1"], abs=1e-4
    )
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle_dir, tampered)
    blob = bytearray((tampered / "model.int8.onnx").read_bytes())
    blob[-10] ^= 0xFF
    (tampered / "model.int8.onnx").write_bytes(bytes(blob))
    done = subprocess.run([*args, "--bundle", str(tampered), "--backend", "onnx-int8"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "sha256 mismatch" in done.stderr and "Traceback" not in done.stderr


def test_eval_cli_data_errors_are_one_line(trained_repo, tmp_path, capsys):
    (tmp_path / "bad.tsv").write_text("text\t12\tid\n")
    code = nexus_cli.main(
        [
            "models",
            "eval",
            "emotion",
            "--bundle",
            str(trained_repo / "emotion" / "1"),
            "--data",
            str(tmp_path / "bad.tsv"),
        ]
    )
    assert code == 2
    assert "unknown label id 12" in capsys.readouterr().err


# --- shipped bundle -------------------------------------------------------------------


def test_shipped_bundle_reaches_the_target_on_dev_with_int8():
    dev = shared_data("goemotions-ekman", "dev.tsv")
    result = pipeline.evaluate(DEFAULT_REPOSITORY / "emotion" / "1", dev, backend="onnx-int8", show_progress=False)
    assert result["n"] == 5426
    assert result["macro_f1"] >= 0.59
