"""The funnel family's ONNX and TFLite graphs (contract in docs/models.md, "Graphs").

MLP on a float feature vector: ``x @ w_i + b_i`` with ReLU between layers and a sigmoid
at the end.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.export import tflite_graphs as tfl
from models.export.onnx_graphs import build_model, initializer
from models.export.quantize import quantize_rows
from models.funnel import NAME


def funnel_onnx(layers: list[tuple[np.ndarray, np.ndarray]], *, int8: bool) -> onnx.ModelProto:
    """The MLP; ``int8`` stores each weight matrix as int8 with per-output-channel scales."""
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
            initializers += [initializer(f"w{i}_q", q.T), initializer(f"w{i}_scale", scale)]
            nodes.append(helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_scale"], [f"w{i}"], axis=1))
        else:
            initializers.append(initializer(f"w{i}", w))
        initializers.append(initializer(f"b{i}", b))
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
        NAME,
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        outputs=[helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", outputs])],
        initializer=initializers,
    )
    return build_model(graph)


def funnel_tflite(layers: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """fp32 FULLY_CONNECTED chain (ReLU fused between layers), LOGISTIC at the end."""
    if not layers:
        raise ValueError("funnel_tflite needs at least one layer")
    g = tfl.Graph()
    features = g.tensor("features", np.float32, [-1, np.asarray(layers[0][0]).shape[0]])
    x = features
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        out = g.tensor("logits" if last else f"h{i}", np.float32, [-1, np.asarray(w).shape[1]])
        tfl.fully_connected(g, x, (f"w{i}", w), (f"b{i}", b), out, relu=not last)
        x = out
    probability = g.tensor("probability", np.float32, [-1, np.asarray(layers[-1][0]).shape[1]])
    tfl.logistic(g, x, probability)
    return g.serialize(NAME, [features], [probability])
