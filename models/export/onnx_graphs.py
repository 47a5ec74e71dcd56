"""ONNX graphs for the two model families (contract in docs/DEVELOPING.md, "Graphs").

Built with ``onnx.helper``; ``save`` checks a graph before writing it and
``read_initializers`` gives the fp32 weights back to training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.errors import NexusError
from models.export.quantize import quantize_rows

OPSET = 17
# onnx 1.23 writes IR 14 by default, which onnxruntime rejects.
IR_VERSION = 9
PRODUCER = "nexus-edge"


def _init(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name=name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = IR_VERSION
    return model


def emotion_onnx(embedding: np.ndarray, dense_w: np.ndarray, dense_b: np.ndarray, *, int8: bool) -> onnx.ModelProto:
    """Embedding bag: ``scores = sigmoid(sum_l weights[b,l] * E[ids[b,l]] @ dense_w + dense_b)``."""
    embedding = np.asarray(embedding, dtype=np.float32)
    dense_w = np.asarray(dense_w, dtype=np.float32)
    dense_b = np.asarray(dense_b, dtype=np.float32)
    classes = dense_w.shape[1]
    if int8:
        q, scale = quantize_rows(embedding)
        initializers = [_init("embedding_q", q), _init("embedding_scale", scale)]
        # The per-row scale is a per-id factor, so it joins the bag weight instead of
        # dequantising a [B, L, D] tensor.
        nodes = [
            helper.make_node("Gather", ["embedding_q", "ids"], ["rows_q"]),
            helper.make_node("Cast", ["rows_q"], ["rows"], to=TensorProto.FLOAT),
            helper.make_node("Gather", ["embedding_scale", "ids"], ["row_scale"]),
            helper.make_node("Mul", ["weights", "row_scale"], ["bag_weights"]),
        ]
        bag_weights = "bag_weights"
    else:
        initializers = [_init("embedding", embedding)]
        nodes = [helper.make_node("Gather", ["embedding", "ids"], ["rows"])]
        bag_weights = "weights"
    initializers += [
        _init("dense_w", dense_w),
        _init("dense_b", dense_b),
        _init("last_axis", np.array([-1], dtype=np.int64)),
        _init("length_axis", np.array([1], dtype=np.int64)),
    ]
    nodes += [
        helper.make_node("Unsqueeze", [bag_weights, "last_axis"], ["bag_weights_3d"]),
        helper.make_node("Mul", ["rows", "bag_weights_3d"], ["weighted_rows"]),
        helper.make_node("ReduceSum", ["weighted_rows", "length_axis"], ["bag"], keepdims=0),
        helper.make_node("MatMul", ["bag", "dense_w"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "dense_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "emotion",
        inputs=[
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["batch", "length"]),
        ],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        initializer=initializers,
    )
    return _model(graph)


def funnel_onnx(layers: list[tuple[np.ndarray, np.ndarray]], *, int8: bool) -> onnx.ModelProto:
    """MLP: ``x @ w_i + b_i`` with ReLU between layers and a sigmoid at the end."""
    if not layers:
        raise ValueError("funnel_onnx needs at least one layer")
    initializers: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    x = "features"
    for i, (w, b) in enumerate(layers):
        w = np.asarray(w, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if int8:
            # Per output channel = per column of w [in, out] = per row of w.T.
            q, scale = quantize_rows(w.T)
            initializers += [_init(f"w{i}_q", q.T), _init(f"w{i}_scale", scale)]
            nodes.append(helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_scale"], [f"w{i}"], axis=1))
        else:
            initializers.append(_init(f"w{i}", w))
        initializers.append(_init(f"b{i}", b))
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}_raw"]),
            helper.make_node("Add", [f"h{i}_raw", f"b{i}"], [f"h{i}"]),
        ]
        x = f"h{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"a{i}"]))
            x = f"a{i}"
    nodes.append(helper.make_node("Sigmoid", [x], ["probability"]))
    features = np.asarray(layers[0][0]).shape[0]
    outputs = np.asarray(layers[-1][0]).shape[1]
    graph = helper.make_graph(
        nodes,
        "funnel",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        outputs=[helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", outputs])],
        initializer=initializers,
    )
    return _model(graph)


def save(model: onnx.ModelProto, path: Path) -> None:
    """Check the graph (types and shapes included), then write it."""
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def read_initializers(path: Path) -> dict[str, np.ndarray]:
    """The fp32 weights of an fp32 artifact by name (``embedding``, ``dense_w``, ``w0``...).

    Integer constants (axes) are left out. An int8 artifact is refused: its weights are
    lossy, and training starts from ``model.onnx``.
    """
    try:
        model = onnx.load_model(str(path))
    except Exception as exc:  # onnx raises protobuf's untyped errors on bad files
        raise NexusError(f"{path}: not a readable ONNX model ({exc})") from None
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if any(a.dtype == np.int8 for a in arrays.values()):
        raise NexusError(f"{path}: holds int8 weights; read the fp32 model.onnx instead")
    return {name: a for name, a in arrays.items() if a.dtype == np.float32}
