"""A model family is one record in one registry (models/families.py).

A toy third family, ``sentiment`` (hashed words -> logistic regression -> P(positive)),
is defined here and added to a temporary registry; the edge serves it, the hub exports a
federated update of it into a bundle, and the federated apps aggregate it, with no edit
anywhere else: each takes the registry it is given.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from pydantic import Field, ValidationError
from starlette.testclient import TestClient

from edge_worker.app import create_app
from edge_worker.settings import EdgeSettings
from federated.client_app import make_client_app
from federated.local_grid import LocalGrid
from federated.server_app import load_base, run_rounds
from hub.archive import pack, unpack
from hub.round_export import register_candidate
from hub.rounds import Rounds
from hub.settings import HubSettings
from hub.state import build_hub
from models.build import manifest_header, staged_bundle, target_version
from models.bundle import ARTIFACTS, BACKENDS, DEFAULT_REPOSITORY, Bundle, BundleError, verify_bundle, write_manifest
from models.errors import DataError, NexusError
from models.export import tflite_graphs as tfl
from models.export.onnx_graphs import build_model, initializer, read_initializers, save
from models.export.quantize import quantize_rows
from models.families import FAMILIES, Families, UnknownFamily, load_predictor
from models.family import Family, Pipeline, Serving, Tensor, probe_shape
from models.metrics import log_loss
from models.predictor import BundlePredictor, Predictor
from models.runtime import Runner, open_runner
from models.task import Examples, ModelSpec, SimulationData, TrainOutput, Weights, random_split
from nexus_wire.runconfig import RunConfig

NAME = "sentiment"
DIM = 32
FEATURIZER = {"dim": DIM}
POSITIVE = ("good", "great", "love", "lovely", "happy", "fine")
NEGATIVE = ("bad", "awful", "hate", "broken", "sad", "late")


# --- the toy family -------------------------------------------------------------------------


class Featurizer:
    """Words hashed into ``dim`` buckets, counts normalised per text."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.dim = int(spec["dim"])

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        x = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                x[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        return x / np.maximum(x.sum(axis=1, keepdims=True), 1.0)


class SentimentPredictor(BundlePredictor):
    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        self.featurizer = Featurizer(bundle.manifest["featurizer"])
        super().__init__(bundle, runner)

    def predict(self, items: Sequence[Any]) -> np.ndarray:
        if not items:
            return np.zeros(0, np.float32)
        return self.runner.run({"features": self.featurizer.transform(items)})["probability"][:, 0]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class SentimentTask:
    default_lr = 2.0
    federated_local_epochs = 1
    federated_lr = 2.0
    central_epochs = 100
    simulation_partition = "iid"
    simulation_rounds = 3

    def init_weights(self, spec: ModelSpec, seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        dim = int(spec.shape["dim"])
        return {"w0": rng.normal(0, 0.01, (dim, 1)).astype(np.float32), "b0": np.zeros(1, np.float32)}

    def shape_of(self, weights: Weights, labels: Sequence[str]) -> dict[str, int]:
        return {"dim": weights["w0"].shape[0]}

    def local_examples(self, store: Any, spec: ModelSpec) -> tuple[Sequence[Any], np.ndarray]:
        raise NexusError("the toy family keeps no examples in an edge's store")

    def featurize(self, spec: ModelSpec, raw: Sequence[Any], labels: np.ndarray) -> Examples:
        return Examples((Featurizer(spec.featurizer).transform(raw),), np.asarray(labels, np.float32))

    def split(self, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return random_split(len(labels), seed)

    def train(self, weights: Weights, data: Examples, epochs: int, seed: int, lr: float, mu: float) -> TrainOutput:
        w, b = weights["w0"].astype(np.float64), weights["b0"].astype(np.float64)
        x, y = data.inputs[0].astype(np.float64), data.labels.astype(np.float64)[:, None]
        for _ in range(epochs):  # full-batch gradient descent on the log loss
            error = _sigmoid(x @ w + b) - y
            w -= lr * x.T @ error / len(y)
            b -= lr * error.mean(axis=0)
        out = {"w0": w.astype(np.float32), "b0": b.astype(np.float32)}
        return TrainOutput(out, log_loss(data.labels, self.scores(out, data)))

    def scores(self, weights: Weights, data: Examples) -> np.ndarray:
        return _sigmoid(data.inputs[0] @ weights["w0"] + weights["b0"])[:, 0]

    def metrics(self, scores: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
        hits = (scores >= 0.5) == (np.asarray(labels) >= 0.5)
        return {"loss": log_loss(labels, scores), "accuracy": float(hits.mean())}

    def simulation_data(self, data: Path, eval_data: Path | None) -> SimulationData:
        raise NexusError("the toy family has no simulation data set")


TASK = SentimentTask()
SPEC = ModelSpec(NAME, FEATURIZER, ("positive",), {"dim": DIM})


def _examples(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts of three words, positive when most are positive words."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.float32)
    texts = []
    for y in labels:
        major, minor = (POSITIVE, NEGATIVE) if y else (NEGATIVE, POSITIVE)
        words = [*rng.choice(major, 2), *rng.choice(minor, 1)]
        texts.append(" ".join(rng.permutation(words)))
    return texts, labels


def _onnx_graph(w: np.ndarray, b: np.ndarray, *, int8: bool) -> onnx.ModelProto:
    """``probability = sigmoid(features @ w0 + b0)``, built with the generic helpers only."""
    w = np.asarray(w, np.float32)
    if int8:
        q, scale = quantize_rows(w.T)  # one scale per output column
        weights = [initializer("w0_q", q.T), initializer("w0_scale", scale)]
        nodes = [helper.make_node("DequantizeLinear", ["w0_q", "w0_scale"], ["w0"], axis=1)]
    else:
        weights, nodes = [initializer("w0", w)], []
    nodes += [
        helper.make_node("MatMul", ["features", "w0"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "b0"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        NAME,
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", DIM])],
        outputs=[helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=[*weights, initializer("b0", np.asarray(b, np.float32))],
    )
    return build_model(graph)


def _tflite_graph(w: np.ndarray, b: np.ndarray) -> bytes:
    g = tfl.Graph()
    features = g.tensor("features", np.float32, [-1, DIM])
    logits = g.tensor("logits", np.float32, [-1, 1])
    tfl.fully_connected(g, features, ("w0", w), ("b0", b), logits, relu=False)
    probability = g.tensor("probability", np.float32, [-1, 1])
    tfl.logistic(g, logits, probability)
    return g.serialize(NAME, [features], [probability])


class SentimentPipeline:
    def export(self, weights: Weights, folder: Path, base: Path | None = None) -> None:
        w, b = weights["w0"], weights["b0"]
        save(_onnx_graph(w, b, int8=False), folder / ARTIFACTS["onnx"])
        save(_onnx_graph(w, b, int8=True), folder / ARTIFACTS["onnx-int8"])
        (folder / ARTIFACTS["tflite"]).write_bytes(_tflite_graph(w, b))

    def train(self, data: Path, out: Path, seed: int = 0, show_progress: bool = True) -> Bundle:
        rows = [line.split("\t") for line in Path(data).read_text().splitlines()]
        examples = TASK.featurize(SPEC, [r[0] for r in rows], np.array([float(r[1]) for r in rows]))
        weights = TASK.train(TASK.init_weights(SPEC, seed), examples, TASK.central_epochs, seed, TASK.default_lr, 0)
        version = target_version(out, NAME, DEFAULT_REPOSITORY)
        with staged_bundle(out, NAME, version) as staging:
            self.export(weights.weights, staging)
            manifest = {
                **manifest_header(NAME, version),
                "labels": ["positive"],
                "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, DIM]}],
                "outputs": [{"name": "probability", "dtype": "float32", "shape": [-1, 1]}],
                "featurizer": FEATURIZER,
                "tolerance": {"reference": "onnx", "max_abs_diff": {"onnx-int8": 2e-2, "tflite": 1e-5}},
            }
            write_manifest(staging, manifest)
        return verify_bundle(out / NAME / version)

    def evaluate(
        self, bundle_dir: Path, data: Path, backend: str = "onnx", show_progress: bool = True
    ) -> dict[str, Any]:
        bundle = verify_bundle(bundle_dir)
        rows = [line.split("\t") for line in Path(data).read_text().splitlines()]
        probs = SentimentPredictor(bundle, open_runner(bundle, backend)).predict([r[0] for r in rows])
        labels = np.array([float(r[1]) for r in rows])
        return {
            "model": bundle.name,
            "model_version": bundle.version,
            "backend": backend,
            "n": len(rows),
            "accuracy": float(((probs >= 0.5) == (labels >= 0.5)).mean()),
        }


PIPELINE = SentimentPipeline()


def _pipeline() -> Pipeline:
    return PIPELINE


def _review(elements: Mapping[str, Any], limits: Mapping[str, int]) -> str:
    value = elements["text"]
    if not isinstance(value, str) or not value.strip():
        raise DataError("a review is a non-blank string")
    if len(value) > limits["max_review_chars"]:
        raise DataError(f"longer than {limits['max_review_chars']} characters")
    return value


def _probabilities(scores: np.ndarray, predictor: Predictor) -> list[float]:
    return np.asarray(scores, np.float64).tolist()


SENTIMENT = Family(
    name=NAME,
    score_name="accuracy",
    predictor=SentimentPredictor,
    featurizer=Featurizer,
    pipeline=_pipeline,
    serving=Serving(
        path="/v1/sentiment",
        summary="P(positive) of one or more reviews",
        one="text",
        many="texts",
        request_doc="One review or a list of reviews.",
        # limits no edge setting names: the family's defaults apply
        limits={"max_reviews": 8, "max_review_chars": 280},
        max_items="max_reviews",
        item_type=lambda limits: Annotated[str, Field(min_length=1, max_length=limits["max_review_chars"])],
        rows=_probabilities,
        answer="probabilities",
        answer_json=lambda p: round(p, 6),
        answer_type=float,
        answer_doc="P(positive) per review",
        oip_inputs=lambda predictor: ((Tensor("text", "BYTES", (-1,)),),),
        oip_output=lambda manifest: Tensor("probability", "FP32", (-1,)),
        oip_item=_review,
        oip_values=lambda rows: np.asarray(rows, np.float32),
    ),
    probe_inputs=lambda manifest, weights, rng: {
        spec["name"]: rng.random(probe_shape(spec["shape"]), dtype=np.float32) for spec in manifest["inputs"]
    },
    task=TASK,
)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def families() -> Iterator[Families]:
    """The shipped families and the toy one; the global registry is left as it was."""
    yield FAMILIES.with_family(SENTIMENT)
    assert NAME not in FAMILIES


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding the toy family's version 1, trained by its own pipeline."""
    root = tmp_path_factory.mktemp("toy")
    texts, labels = _examples(400, seed=1)
    data = root / "reviews.tsv"
    data.write_text("".join(f"{t}\t{int(y)}\n" for t, y in zip(texts, labels)))
    bundle = PIPELINE.train(data, root / "models")
    assert bundle.version == "1" and PIPELINE.evaluate(bundle.path, data)["accuracy"] > 0.9
    return root / "models"


# --- the registry ---------------------------------------------------------------------------


def test_the_registry_names_its_families_and_refuses_unknown_ones(families: Families) -> None:
    # the emotion family's two tiers, fast (``emotion``) and accurate, then the funnel
    assert FAMILIES.names() == ("emotion", "emotion-accurate", "funnel")
    assert families.names() == ("emotion", "emotion-accurate", "funnel", NAME) and families.get(NAME) is SENTIMENT
    with pytest.raises(
        UnknownFamily, match=r"unknown model family 'churn' \(expected one of emotion, emotion-accurate, funnel\)"
    ):
        FAMILIES.get("churn")
    with pytest.raises(ValueError, match="two model families"):
        families.with_family(SENTIMENT)
    assert isinstance(UnknownFamily("x"), NexusError)


def test_a_bundle_loads_only_with_a_registry_that_knows_its_family(families: Families, repository: Path) -> None:
    bundle = repository / NAME / "1"
    with pytest.raises(BundleError, match="unknown model family 'sentiment'"):
        load_predictor(bundle)
    predictor = load_predictor(bundle, families=families)
    assert isinstance(predictor, SentimentPredictor)
    good, bad = predictor.predict(["good great love", "awful bad hate"])
    assert good > 0.5 > bad


# --- the edge -------------------------------------------------------------------------------


def test_the_edge_serves_the_toy_family(tmp_path: Path, families: Families, repository: Path) -> None:
    values = {"models_dir": repository, "data_dir": tmp_path / "data", "models": NAME}
    with pytest.raises(ValidationError, match="non-empty subset of emotion, emotion-accurate, funnel"):
        EdgeSettings.model_validate(values)
    settings = EdgeSettings.model_validate(values, context={"families": families})
    texts = ["good great fine", "awful late bad", "love it"]
    expected = load_predictor(repository / NAME / "1", families=families).predict(texts)
    with TestClient(create_app(settings, families)) as client:
        assert client.get("/v2/health/ready").json() == {"ready": True}
        many = client.post("/v1/sentiment", json={"texts": texts})
        assert many.status_code == 200, many.text
        body = many.json()
        assert body["model"] == NAME and body["model_version"] == "1"
        np.testing.assert_allclose(body["probabilities"], expected, atol=1e-6)
        assert (
            client.post("/v1/sentiment", json={"text": texts[0]}).json()["probabilities"] == body["probabilities"][:1]
        )
        too_many = client.post("/v1/sentiment", json={"texts": ["good"] * 9})
        assert too_many.status_code == 422 and "at most 8 items" in too_many.json()["error"]
        assert client.post("/v1/emotion", json={"text": "hi"}).status_code == 404  # only what it serves

        meta = client.get(f"/v2/models/{NAME}").json()
        assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1]}]
        assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
        tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
        infer = client.post(f"/v2/models/{NAME}/infer", json={"id": "r-1", "inputs": [tensor]})
        assert infer.status_code == 200, infer.text
        output = infer.json()["outputs"][0]
        assert output["name"] == "probability" and output["shape"] == [len(texts)]
        np.testing.assert_allclose(output["data"], expected, atol=1e-6)
        blank = {**tensor, "shape": [1], "data": [" "]}
        refused = client.post(f"/v2/models/{NAME}/infer", json={"inputs": [blank]})
        assert refused.status_code == 422 and refused.json()["error"] == "text[0]: a review is a non-blank string"

        doc = client.get("/openapi.json").json()
        assert set(doc["paths"]) >= {"/v1/sentiment"} and "/v1/feedback" not in doc["paths"]
        assert json.dumps(doc["components"]["schemas"]["SentimentRequest"]).count('"maxItems": 8') == 1


# --- the hub --------------------------------------------------------------------------------


def test_the_hub_exports_a_federated_update_of_the_toy_family(
    tmp_path: Path, families: Families, repository: Path
) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub")
    hub = build_hub(settings)
    try:
        hub.registry.push(pack(repository / NAME / "1"))
        with pytest.raises(NexusError, match="unknown model 'sentiment'"):
            Rounds(settings, hub.store, hub.registry).prepare(RunConfig(model=NAME, rounds=1))
        rounds = Rounds(settings, hub.store, hub.registry, families=families)
        run = rounds.prepare(RunConfig(model=NAME, rounds=1))
        assert run.score_name == "accuracy"
        folder = rounds.run_dir(run.run_id)
        weights = read_initializers(folder / "base" / "model.onnx")
        weights["b0"] = weights["b0"] + 0.25  # stands in for the aggregate
        with open(folder / "final.npz", "wb") as fh:
            np.savez(fh, **weights)
        summary = {"rounds": [{"round": 1, "loss": 0.4, "score": 0.75, "eval_nodes": 2}], "participants": [1, 2]}
        record = register_candidate(hub.registry, run, folder, summary, None, families)

        manifest = record.manifest
        assert record.version == "2" and manifest["parent_version"] == "1" and manifest["family"] == NAME
        assert manifest["featurizer"] == FEATURIZER and manifest["inputs"][0]["shape"] == [-1, DIM]
        assert manifest["metrics"]["federated_held_out"]["numpy"]["accuracy"] == 0.75
        measured = manifest["tolerance"]["measured_on_random_inputs"]
        assert set(measured) == set(BACKENDS) - {"onnx"}
        assert all(measured[b] <= manifest["tolerance"]["max_abs_diff"][b] for b in measured)

        out = tmp_path / "candidate"
        out.mkdir()
        unpack(hub.registry.read_archive(NAME, "2"), out)
        base = load_predictor(repository / NAME / "1", families=families).predict(["good"])
        moved = load_predictor(out, families=families).predict(["good"])
        assert moved[0] > base[0]  # the update's bias, through the exported artifact
    finally:
        hub.store.close()


# --- the federated apps ---------------------------------------------------------------------


def test_the_federated_apps_aggregate_the_toy_family(families: Families, repository: Path) -> None:
    spec, initial = load_base(RunConfig(model=NAME, base=str(repository / NAME / "1")), families)
    assert spec == ModelSpec(NAME, FEATURIZER, ("positive",), {"dim": DIM}) and set(initial) == {"w0", "b0"}
    initial = TASK.init_weights(spec, 0)  # from scratch: the rounds must learn it

    shares = {}
    for node in range(3):
        texts, labels = _examples(120, seed=10 + node)
        shares[f"node-{node}"] = TASK.featurize(spec, texts, labels)
    client = make_client_app(lambda node_config, _spec: shares[node_config["partition"]], families=families)
    grid = LocalGrid(client, {i + 1: {"partition": name} for i, name in enumerate(shares)})
    run = RunConfig(model=NAME, rounds=3, min_nodes=3, local_epochs=20, compression="none")
    result = run_rounds(grid, run, spec, initial, families=families)

    assert [r.participants for r in result.rounds] == [3, 3, 3]
    assert all(r.score is not None for r in result.rounds)
    assert result.rounds[-1].loss < result.rounds[0].loss
    texts, labels = _examples(200, seed=99)
    held_out = TASK.featurize(spec, texts, labels)
    assert TASK.metrics(TASK.scores(result.weights, held_out), labels, 0)["accuracy"] > 0.9
