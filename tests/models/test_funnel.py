"""Funnel family: featurizer, data reader, numpy trainer, export parity, shipped bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nexus_cli
from models.bundle import BACKENDS, DEFAULT_REPOSITORY, sha256_file, verify_bundle
from models.errors import DataError
from models.export.onnx_graphs import read_initializers
from models.families import load_predictor
from models.funnel import pipeline, train
from models.funnel.data import LABEL, read_sessions, split_indices
from models.funnel.featurizer import Featurizer, fit_spec
from tests.support.env import shared_data
from tests.support.sessions import write_csv

MONTHS = ["Feb", "Mar", "May", "June", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
VISITORS = ["Returning_Visitor", "New_Visitor", "Other"]


def synthetic_sessions(n: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Sessions shaped like Online Shoppers, where buying depends on PageValues and ExitRates."""
    rng = np.random.default_rng(seed)
    sessions, labels = [], []
    for _ in range(n):
        page_values = float(rng.exponential(10.0)) if rng.random() < 0.3 else 0.0
        exit_rates = float(rng.uniform(0.0, 0.2))
        s = {
            "Administrative": int(rng.poisson(2)),
            "Administrative_Duration": float(rng.exponential(60.0)),
            "Informational": int(rng.poisson(0.5)),
            "Informational_Duration": float(rng.exponential(20.0)),
            "ProductRelated": int(rng.poisson(30)),
            "ProductRelated_Duration": float(rng.exponential(1000.0)),
            "BounceRates": float(rng.uniform(0.0, 0.2)),
            "ExitRates": exit_rates,
            "PageValues": page_values,
            "SpecialDay": float(rng.choice([0.0, 0.0, 0.0, 0.4, 1.0])),
            "Month": str(rng.choice(MONTHS)),
            "OperatingSystems": int(rng.choice([1, 2, 2, 3])),
            "Browser": str(rng.choice(["1", "2", "2", "4"])),
            "Region": int(rng.integers(1, 10)),
            "TrafficType": int(rng.choice([1, 2, 3, 4, 13])),
            "VisitorType": str(rng.choice(VISITORS)),
            "Weekend": bool(rng.random() < 0.25),
        }
        logit = 0.3 * page_values - 20.0 * exit_rates - 1.0 + rng.normal(0, 0.5)
        sessions.append(s)
        labels.append(float(logit > 0))
    return sessions, np.asarray(labels, dtype=np.float32)


@pytest.fixture(scope="module")
def synthetic() -> tuple[list[dict], np.ndarray]:
    return synthetic_sessions(600)


@pytest.fixture(scope="module")
def featurizer(synthetic) -> Featurizer:
    return Featurizer.from_spec(json.loads(json.dumps(fit_spec(synthetic[0]))))


@pytest.fixture(scope="module")
def trained_repo(tmp_path_factory, synthetic) -> Path:
    data = write_csv(tmp_path_factory.mktemp("data") / "sessions.csv", *synthetic)
    repo = tmp_path_factory.mktemp("repo")
    pipeline.train(data.parent, repo, seed=3, show_progress=False)
    return repo


# --- featurizer ---------------------------------------------------------------------


def test_featurizer_is_deterministic_and_round_trips_through_json(synthetic, featurizer):
    sessions = synthetic[0][:50]
    x = featurizer.transform(sessions)
    assert x.dtype == np.float32 and x.shape == (50, featurizer.n_features)
    assert np.array_equal(x, featurizer.transform(sessions))
    again = Featurizer.from_spec(json.loads(json.dumps(featurizer.to_spec())))
    assert np.array_equal(x, again.transform(sessions))
    assert len(featurizer.feature_names()) == featurizer.n_features


def test_region_is_not_a_feature(synthetic, featurizer):
    names = featurizer.feature_names()
    assert not any(n.startswith("Region") for n in names)
    session = dict(synthetic[0][0])
    del session["Region"]
    featurizer.transform([session])  # not required either


def test_unknown_category_goes_to_the_unknown_bucket(synthetic, featurizer):
    base = dict(synthetic[0][0], Month="Jan", TrafficType=99)
    x = featurizer.transform([base])[0]
    names = featurizer.feature_names()
    assert x[names.index("Month=<unknown>")] == 1.0
    assert x[names.index("TrafficType=<unknown>")] == 1.0
    assert sum(x[i] for i, n in enumerate(names) if n.startswith("Month=")) == 1.0


def test_integer_and_string_codes_are_the_same_category(synthetic, featurizer):
    session = dict(synthetic[0][0], Browser="2", OperatingSystems=3)
    same = dict(session, Browser=2, OperatingSystems="3")
    assert np.array_equal(featurizer.transform([session]), featurizer.transform([same]))


def test_numeric_columns_are_standardised_on_the_fitting_data(synthetic, featurizer):
    x = featurizer.transform(synthetic[0])
    n_numeric = len(featurizer.numeric)
    assert np.allclose(x[:, :n_numeric].mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(x[:, :n_numeric].std(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"PageValues": None}, "PageValues"),
        ({"PageValues": "12.5"}, "PageValues"),
        ({"ExitRates": True}, "ExitRates"),
        ({"BounceRates": float("nan")}, "BounceRates"),
        ({"Month": 3.5}, "Month"),
        ({"VisitorType": None}, "VisitorType"),
        ({"Weekend": "TRUE"}, "Weekend"),
        ({"Weekend": 1}, "Weekend"),
    ],
)
def test_wrong_types_raise_a_one_line_data_error_naming_the_field(synthetic, featurizer, change, field):
    sessions = [synthetic[0][0], dict(synthetic[0][1], **change)]
    with pytest.raises(DataError) as err:
        featurizer.transform(sessions)
    message = str(err.value)
    assert field in message and "session 1" in message and "\n" not in message


def test_missing_field_and_non_object_raise_data_errors(synthetic, featurizer):
    session = dict(synthetic[0][0])
    del session["ProductRelated"]
    with pytest.raises(DataError, match="session 0: required field 'ProductRelated' is missing"):
        featurizer.transform([session])
    with pytest.raises(DataError, match="session 1: expected an object"):
        featurizer.transform([synthetic[0][0], [1, 2]])


def test_malformed_spec_is_a_data_error(featurizer):
    spec = featurizer.to_spec()
    with pytest.raises(DataError, match="says 3 features"):
        Featurizer.from_spec(dict(spec, n_features=3))
    with pytest.raises(DataError, match="malformed"):
        Featurizer.from_spec({"version": 1})


# --- data reader and split ----------------------------------------------------------


def test_reader_round_trips_a_csv_and_accepts_its_folder(tmp_path, synthetic):
    path = write_csv(tmp_path / "sessions.csv", synthetic[0][:20], synthetic[1][:20])
    data = read_sessions(tmp_path)
    assert data.path == path and len(data.sessions) == 20
    assert np.array_equal(data.labels, synthetic[1][:20])
    assert data.sessions[0]["Weekend"] is synthetic[0][0]["Weekend"]
    assert data.sessions[0]["OperatingSystems"] == str(synthetic[0][0]["OperatingSystems"])


def test_reader_errors_are_one_line(tmp_path, synthetic):
    with pytest.raises(DataError, match="no such file"):
        read_sessions(tmp_path / "absent.csv")
    path = write_csv(tmp_path / "s.csv", synthetic[0][:3], synthetic[1][:3])
    lines = path.read_text().splitlines()

    (tmp_path / "nocol.csv").write_text("\n".join([lines[0].replace("PageValues", "Pages")] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="missing column 'PageValues'"):
        read_sessions(tmp_path / "nocol.csv")

    header = lines[0].split(",")
    bad = lines[2].split(",")
    bad[header.index("ExitRates")] = "lots"
    (tmp_path / "bad.csv").write_text("\n".join([lines[0], lines[1], ",".join(bad)]) + "\n")
    with pytest.raises(DataError, match=r"line 3: column 'ExitRates' has 'lots', expected a number"):
        read_sessions(tmp_path / "bad.csv")

    bad = lines[1].split(",")
    bad[header.index(LABEL)] = "maybe"
    (tmp_path / "label.csv").write_text("\n".join([lines[0], ",".join(bad)]) + "\n")
    with pytest.raises(DataError, match=r"line 2: column 'Revenue' has 'maybe'"):
        read_sessions(tmp_path / "label.csv")

    (tmp_path / "short.csv").write_text(lines[0] + "\n1,2\n")
    with pytest.raises(DataError, match="line 2: 2 fields"):
        read_sessions(tmp_path / "short.csv")

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        read_sessions(tmp_path / "empty.csv")


def test_split_is_deterministic_stratified_and_disjoint(synthetic):
    labels = synthetic[1]
    train_idx, test_idx = split_indices(labels)
    again = split_indices(labels)
    assert np.array_equal(train_idx, again[0]) and np.array_equal(test_idx, again[1])
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert train_idx.size + test_idx.size == labels.size
    assert abs(labels[test_idx].mean() - labels.mean()) < 0.02
    assert abs(test_idx.size / labels.size - 0.2) < 0.01
    assert not np.array_equal(test_idx, split_indices(labels, seed=1)[1])


# --- training -----------------------------------------------------------------------


def test_training_is_bit_identical_for_a_seed_and_learns(synthetic, featurizer):
    x, y = featurizer.transform(synthetic[0]), synthetic[1]
    spec = featurizer.to_spec()
    a = train.fit(train.init_weights(spec, 7), x, y, epochs=20, seed=7)
    b = train.fit(train.init_weights(spec, 7), x, y, epochs=20, seed=7)
    c = train.fit(train.init_weights(spec, 8), x, y, epochs=20, seed=8)
    assert all(a.weights[k].tobytes() == b.weights[k].tobytes() for k in a.weights)
    assert any(a.weights[k].tobytes() != c.weights[k].tobytes() for k in a.weights)
    assert {k: v.dtype for k, v in a.weights.items()} == dict.fromkeys(("w0", "b0", "w1", "b1"), np.float32)
    assert train.evaluate_weights(a.weights, x, y)["roc_auc"] > 0.9


def test_fit_starts_from_the_given_weights_without_mutating_them(synthetic, featurizer):
    x, y = featurizer.transform(synthetic[0]), synthetic[1]
    start = train.fit(train.init_weights(featurizer.to_spec(), 0), x, y, epochs=5, seed=0).weights
    snapshot = {k: v.copy() for k, v in start.items()}
    unchanged = train.fit(start, x, y, epochs=0, seed=1)
    assert all(np.array_equal(unchanged.weights[k], start[k]) for k in start)
    cont = train.fit(start, x, y, epochs=1, seed=1, lr=1e-4)
    assert all(np.array_equal(start[k], snapshot[k]) for k in start)
    # a small step from trained weights stays near them and keeps their quality
    assert max(float(np.abs(cont.weights[k] - start[k]).max()) for k in start) < 0.05
    before = train.evaluate_weights(start, x, y)["loss"]
    assert train.evaluate_weights(cont.weights, x, y)["loss"] <= before + 1e-3


def test_proximal_term_pulls_towards_the_global_weights(synthetic, featurizer):
    x, y = featurizer.transform(synthetic[0]), synthetic[1]
    # a "global" model trained on one half, then local training on the other, less balanced half
    start = train.fit(train.init_weights(featurizer.to_spec(), 0), x[:300], y[:300], epochs=3, seed=0).weights
    local = y[300:] > 0
    xs, ys = x[300:][local | (np.arange(300) % 4 == 0)], y[300:][local | (np.arange(300) % 4 == 0)]

    def distance(weights):
        return float(np.sqrt(sum(np.sum((weights[k] - start[k]) ** 2) for k in start)))

    free = distance(train.fit(start, xs, ys, epochs=5, seed=2).weights)
    prox = distance(train.fit(start, xs, ys, epochs=5, seed=2, mu=1.0).weights)
    strong = distance(train.fit(start, xs, ys, epochs=5, seed=2, mu=10.0).weights)
    assert strong < prox < free


def test_evaluate_weights_reports_loss_and_auc(synthetic, featurizer):
    x, y = featurizer.transform(synthetic[0]), synthetic[1]
    weights = train.init_weights(featurizer.to_spec(), 0)
    result = train.evaluate_weights(weights, x, y)
    assert set(result) >= {"loss", "roc_auc"} and 0.0 <= result["roc_auc"] <= 1.0 and result["loss"] > 0


# --- pipeline, export parity, bundle ------------------------------------------------


def test_pipeline_writes_a_complete_bundle_whose_backends_agree(trained_repo, synthetic):
    bundle = verify_bundle(trained_repo / "funnel" / "1")
    m = bundle.manifest
    for key in (
        "format",
        "name",
        "family",
        "version",
        "parent_version",
        "created_at",
        "labels",
        "inputs",
        "outputs",
        "featurizer",
        "metrics",
        "tolerance",
        "provenance",
        "files",
    ):
        assert key in m, key
    assert m["family"] == "funnel" and m["labels"] == ["purchase"]
    assert set(m["files"]) == {"model.onnx", "model.int8.onnx", "model.tflite"}
    assert set(m["metrics"]["held_out"]) == set(BACKENDS)
    assert {"sha256", "file"} <= set(m["provenance"]["data"]) and m["provenance"]["seed"] == 3

    featurizer = Featurizer.from_spec(m["featurizer"])
    sessions = synthetic_sessions(300, seed=11)[0]
    reference = train.predict(read_initializers(bundle.path / "model.onnx"), featurizer.transform(sessions))
    probs = {b: load_predictor(bundle.path, b).predict(sessions) for b in BACKENDS}
    assert np.abs(probs["onnx"] - reference).max() < 1e-5
    for backend, limit in m["tolerance"]["max_abs_diff"].items():
        assert probs[backend].shape == (300,) and probs[backend].dtype == np.float32
        assert np.abs(probs[backend] - probs["onnx"]).max() <= limit, backend
    assert load_predictor(bundle.path, "tflite").predict([]).shape == (0,)


def test_retraining_into_another_repository_takes_the_next_version(trained_repo, tmp_path, synthetic):
    data = write_csv(tmp_path / "sessions.csv", *synthetic)
    bundle = pipeline.train(data, trained_repo, seed=3, show_progress=False)
    assert bundle.version == "2" and bundle.path == trained_repo / "funnel" / "2"
    first = verify_bundle(trained_repo / "funnel" / "1").manifest["files"]
    # same data and seed: the same weights, so the same artifacts
    assert bundle.manifest["files"]["model.onnx"] == first["model.onnx"]


def test_retraining_into_the_default_repository_replaces_version_1(tmp_path, synthetic, monkeypatch):
    data = write_csv(tmp_path / "sessions.csv", *synthetic)
    repo = tmp_path / "default"
    monkeypatch.setattr(pipeline, "DEFAULT_REPOSITORY", repo)
    first = pipeline.train(data, repo, seed=1, show_progress=False)
    second = pipeline.train(data, repo, seed=2, show_progress=False)
    assert first.version == second.version == "1"
    assert sorted(p.name for p in (repo / "funnel").iterdir()) == ["1"]  # no staging or old copies left
    assert verify_bundle(repo / "funnel" / "1").manifest["provenance"]["seed"] == 2


def test_eval_cli_scores_every_row_of_a_csv(trained_repo, tmp_path, capsys):
    sessions, labels = synthetic_sessions(200, seed=5)
    data = write_csv(tmp_path / "eval.csv", sessions, labels)
    code = nexus_cli.main(
        [
            "models",
            "eval",
            "funnel",
            "--data",
            str(data),
            "--bundle",
            str(trained_repo / "funnel" / "1"),
            "--backend",
            "onnx-int8",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 200 and result["backend"] == "onnx-int8" and result["model_version"] == "1"
    assert result["roc_auc"] > 0.9 and result["log_loss"] > 0


def test_shipped_bundle_reaches_the_target_on_the_held_out_split(tmp_path):
    source = shared_data("online-shoppers", "sessions.csv")
    data = read_sessions(source)
    _, test_idx = split_indices(data.labels)
    lines = source.read_text().splitlines()
    held_out = tmp_path / "held_out.csv"
    held_out.write_text("\n".join([lines[0]] + [lines[i + 1] for i in test_idx]) + "\n")
    bundle_dir = DEFAULT_REPOSITORY / "funnel" / "1"
    manifest = verify_bundle(bundle_dir).manifest
    assert manifest["provenance"]["data"]["sha256"] == sha256_file(source)
    for backend in BACKENDS:
        result = pipeline.evaluate(bundle_dir, held_out, backend=backend, show_progress=False)
        assert result["n"] == test_idx.size
        assert result["roc_auc"] >= 0.91, (backend, result)
        assert abs(result["roc_auc"] - manifest["metrics"]["held_out"][backend]["roc_auc"]) < 1e-9


def test_integer_beyond_float_range_is_a_data_error(synthetic, featurizer):
    session = dict(synthetic[0][0], PageValues=10**400)
    with pytest.raises(DataError, match="session 0: a numeric field is out of range"):
        featurizer.transform([session])
