"""The families' graph writers and the generic export helpers, run through the project's own runners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter
from onnx import TensorProto, helper

from models.emotion.graphs import emotion_onnx, emotion_tflite
from models.errors import NexusError
from models.export import onnx_graphs, tflite_graphs
from models.export.quantize import quantize_rows
from models.funnel.graphs import funnel_onnx, funnel_tflite
from models.runtime import LiteRTRunner, OrtRunner

V, D, C = 1000, 16, 7
F, HIDDEN = 20, 16
SHAPES = [(batch, length) for batch in (1, 5, 32) for length in (1, 7, 64)]
BATCHES = (1, 5, 32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- emotion


@pytest.fixture(scope="module")
def emotion_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    embedding = rng.normal(0, 0.5, size=(V, D)).astype(np.float32)
    embedding[3] = 0.0  # an all-zero row must survive quantisation
    dense_w = rng.normal(0, 0.5, size=(D, C)).astype(np.float32)
    dense_b = rng.normal(0, 0.1, size=C).astype(np.float32)
    return embedding, dense_w, dense_b


@pytest.fixture(scope="module")
def emotion_files(emotion_weights, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("emotion")
    files = {"onnx": out / "model.onnx", "onnx-int8": out / "model.int8.onnx", "tflite": out / "model.tflite"}
    onnx_graphs.save(emotion_onnx(*emotion_weights, int8=False), files["onnx"])
    onnx_graphs.save(emotion_onnx(*emotion_weights, int8=True), files["onnx-int8"])
    files["tflite"].write_bytes(emotion_tflite(*emotion_weights))
    return files


@pytest.fixture(scope="module")
def emotion_runners(emotion_files):
    return {
        "onnx": OrtRunner(emotion_files["onnx"], "onnx"),
        "onnx-int8": OrtRunner(emotion_files["onnx-int8"], "onnx-int8"),
        "tflite": LiteRTRunner(emotion_files["tflite"]),
    }


def _bag_inputs(batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Random ids with normalised weights; rows longer than 1 end in zero-weight padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(batch, length), dtype=np.int64)
    weights = rng.random((batch, length), dtype=np.float32) + 0.01
    if length > 1:
        weights[:, -(length // 3 or 1) :] = 0.0
        ids[:, -(length // 3 or 1) :] = 0
    weights /= weights.sum(axis=1, keepdims=True)
    return {"ids": ids, "weights": weights}


def _emotion_reference(weights, inputs: dict[str, np.ndarray]) -> np.ndarray:
    embedding, dense_w, dense_b = (w.astype(np.float64) for w in weights)
    bag = (inputs["weights"][..., None] * embedding[inputs["ids"]]).sum(axis=1)
    return _sigmoid(bag @ dense_w + dense_b)


@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_emotion_backends_match_numpy_and_each_other(emotion_weights, emotion_runners, batch, length):
    inputs = _bag_inputs(batch, length, seed=batch * 100 + length)
    expected = _emotion_reference(emotion_weights, inputs)
    scores = {name: runner.run(inputs)["scores"] for name, runner in emotion_runners.items()}
    for name, value in scores.items():
        assert value.shape == (batch, C), name
        assert value.dtype == np.float32, name
    assert np.abs(scores["onnx"] - expected).max() < 1e-5
    assert np.abs(scores["onnx-int8"] - expected).max() < 2e-2
    # TFLite computes the int8 ONNX graph's arithmetic.
    assert np.abs(scores["tflite"] - scores["onnx-int8"]).max() < 1e-4


def test_emotion_onnx_interface(emotion_weights):
    for int8 in (False, True):
        model = emotion_onnx(*emotion_weights, int8=int8)
        assert model.ir_version == 9
        inputs = {i.name: i.type.tensor_type for i in model.graph.input}
        assert inputs["ids"].elem_type == TensorProto.INT64
        assert inputs["weights"].elem_type == TensorProto.FLOAT
        for t in inputs.values():
            assert all(d.dim_param for d in t.shape.dim), "batch and length must be dynamic"
        (output,) = model.graph.output
        assert output.name == "scores"
        names = {t.name: t for t in model.graph.initializer}
        if int8:
            assert names["embedding_q"].data_type == TensorProto.INT8
            assert names["embedding_scale"].data_type == TensorProto.FLOAT
            assert "embedding" not in names
        else:
            assert names["embedding"].data_type == TensorProto.FLOAT
        assert names["dense_w"].data_type == TensorProto.FLOAT
        assert names["dense_b"].data_type == TensorProto.FLOAT


def test_emotion_tflite_interface(emotion_files):
    data = emotion_files["tflite"].read_bytes()
    assert data[4:8] == b"TFL3"
    interp = Interpreter(model_path=str(emotion_files["tflite"]))
    details = {d["name"]: d for d in interp.get_input_details() + interp.get_output_details()}
    assert set(details) == {"ids", "weights", "scores"}
    assert details["ids"]["dtype"] == np.int64
    assert details["weights"]["dtype"] == np.float32
    assert list(details["ids"]["shape_signature"]) == [-1, -1]
    assert list(details["scores"]["shape_signature"]) == [-1, C]


def test_tflite_buffers_are_aligned_and_buffer_zero_is_empty(emotion_files):
    data = emotion_files["tflite"].read_bytes()
    model = tflite_graphs.fb.Model.GetRootAs(data, 0)
    assert model.Version() == 3
    assert model.Buffers(0).DataLength() == 0
    for i in range(1, model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            start = buffer._tab.Vector(buffer._tab.Offset(4))
            assert start % 16 == 0, f"buffer {i} starts at {start}"


def test_read_initializers_round_trip(emotion_weights, emotion_files):
    weights = onnx_graphs.read_initializers(emotion_files["onnx"])
    assert set(weights) == {"embedding", "dense_w", "dense_b"}
    for name, original in zip(("embedding", "dense_w", "dense_b"), emotion_weights):
        assert weights[name].dtype == np.float32
        np.testing.assert_array_equal(weights[name], original)
    with pytest.raises(NexusError, match="int8"):
        onnx_graphs.read_initializers(emotion_files["onnx-int8"])


def test_read_initializers_rejects_a_non_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(NexusError):
        onnx_graphs.read_initializers(path)


def test_save_rejects_an_invalid_graph(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "broken",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(onnx.checker.ValidationError):
        onnx_graphs.save(helper.make_model(graph), tmp_path / "broken.onnx")
    assert not (tmp_path / "broken.onnx").exists()


def test_quantize_rows():
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(50, 9)).astype(np.float32)
    matrix[7] = 0.0
    q, scale = quantize_rows(matrix)
    assert q.dtype == np.int8 and q.shape == matrix.shape
    assert scale.dtype == np.float32 and scale.shape == (50,)
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)
    assert np.abs(q).max() <= 127
    # Each row's peak maps to +-127, and rounding error is at most half a step.
    assert np.all(np.abs(q[np.arange(50) != 7]).max(axis=1) == 127)
    assert np.all(np.abs(q * scale[:, None] - matrix) <= scale[:, None] / 2 + 1e-7)
    assert not q[7].any()


# ---------------------------------------------------------------- funnel


@pytest.fixture(scope="module")
def funnel_layers() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    sizes = [F, HIDDEN, HIDDEN, 1]
    # Scaled like a trained layer (std 1/sqrt(fan_in)); wilder weights amplify int8 error.
    return [
        (rng.normal(0, a**-0.5, size=(a, b)).astype(np.float32), rng.normal(0, 0.1, size=b).astype(np.float32))
        for a, b in zip(sizes, sizes[1:])
    ]


@pytest.fixture(scope="module")
def funnel_runners(funnel_layers, tmp_path_factory):
    out = tmp_path_factory.mktemp("funnel")
    onnx_graphs.save(funnel_onnx(funnel_layers, int8=False), out / "model.onnx")
    onnx_graphs.save(funnel_onnx(funnel_layers, int8=True), out / "model.int8.onnx")
    (out / "model.tflite").write_bytes(funnel_tflite(funnel_layers))
    return {
        "onnx": OrtRunner(out / "model.onnx", "onnx"),
        "onnx-int8": OrtRunner(out / "model.int8.onnx", "onnx-int8"),
        "tflite": LiteRTRunner(out / "model.tflite"),
    }


def _funnel_reference(layers, features: np.ndarray) -> np.ndarray:
    x = features.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return _sigmoid(x)


@pytest.mark.parametrize("batch", BATCHES)
def test_funnel_backends_match_numpy(funnel_layers, funnel_runners, batch):
    features = np.random.default_rng(batch).normal(size=(batch, F)).astype(np.float32)
    expected = _funnel_reference(funnel_layers, features)
    for name, runner in funnel_runners.items():
        probability = runner.run({"features": features})["probability"]
        assert probability.shape == (batch, 1), name
        assert probability.dtype == np.float32, name
        tolerance = 2e-2 if name == "onnx-int8" else 1e-5
        assert np.abs(probability - expected).max() < tolerance, name


def test_funnel_onnx_interface_and_round_trip(funnel_layers, tmp_path):
    model = funnel_onnx(funnel_layers, int8=True)
    names = {t.name: t for t in model.graph.initializer}
    for i, (w, _) in enumerate(funnel_layers):
        assert names[f"w{i}_q"].data_type == TensorProto.INT8
        assert list(names[f"w{i}_q"].dims) == list(w.shape)
        assert list(names[f"w{i}_scale"].dims) == [w.shape[1]]
        assert names[f"b{i}"].data_type == TensorProto.FLOAT
    path = tmp_path / "model.onnx"
    onnx_graphs.save(funnel_onnx(funnel_layers, int8=False), path)
    weights = onnx_graphs.read_initializers(path)
    assert set(weights) == {f"{k}{i}" for i in range(len(funnel_layers)) for k in "wb"}
    for i, (w, b) in enumerate(funnel_layers):
        np.testing.assert_array_equal(weights[f"w{i}"], w)
        np.testing.assert_array_equal(weights[f"b{i}"], b)


def test_funnel_tflite_interface(funnel_layers, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(funnel_tflite(funnel_layers))
    interp = Interpreter(model_path=str(path))
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    assert (inp["name"], list(inp["shape_signature"])) == ("features", [-1, F])
    assert (out["name"], list(out["shape_signature"])) == ("probability", [-1, 1])
