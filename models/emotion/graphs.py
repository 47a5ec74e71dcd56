"""The emotion family's ONNX and TFLite graphs (contract in docs/models.md, "Graphs").

Embedding bag: ``scores = sigmoid(sum_l weights[b,l] * E[ids[b,l]] @ dense_w + dense_b)``.
The TFLite graph has the arithmetic of the int8 ONNX one.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.emotion import NAME
from models.export import tflite_graphs as tfl
from models.export.onnx_graphs import build_model, initializer
from models.export.quantize import quantize_rows


def emotion_onnx(embedding: np.ndarray, dense_w: np.ndarray, dense_b: np.ndarray, *, int8: bool) -> onnx.ModelProto:
    """The embedding bag; ``int8`` stores the table as int8 rows with per-row scales."""
    embedding = np.asarray(embedding, dtype=np.float32)
    dense_w = np.asarray(dense_w, dtype=np.float32)
    dense_b = np.asarray(dense_b, dtype=np.float32)
    classes = dense_w.shape[1]
    if int8:
        q, scale = quantize_rows(embedding)
        initializers = [initializer("embedding_q", q), initializer("embedding_scale", scale)]
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
        initializers = [initializer("embedding", embedding)]
        nodes = [helper.make_node("Gather", ["embedding", "ids"], ["rows"])]
        bag_weights = "weights"
    initializers += [
        initializer("dense_w", dense_w),
        initializer("dense_b", dense_b),
        initializer("last_axis", np.array([-1], dtype=np.int64)),
        initializer("length_axis", np.array([1], dtype=np.int64)),
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
        NAME,
        inputs=[
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["batch", "length"]),
        ],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])],
        initializer=initializers,
    )
    return build_model(graph)


def emotion_tflite(embedding: np.ndarray, dense_w: np.ndarray, dense_b: np.ndarray) -> bytes:
    """The int8 emotion graph: GATHER the int8 rows, DEQUANTIZE them with scale 1 and fold
    the gathered per-row scales into the bag weights (as the int8 ONNX graph does)."""
    q, row_scale = quantize_rows(embedding)
    dim = q.shape[1]
    classes = np.asarray(dense_w).shape[1]
    g = tfl.Graph()
    ids = g.tensor("ids", np.int64, [-1, -1])
    weights = g.tensor("weights", np.float32, [-1, -1])
    table = g.const("embedding_q", q, scale=1.0)
    scales = g.const("embedding_scale", row_scale)

    rows_q = g.tensor("rows_q", np.int8, [-1, -1, dim], scale=1.0)
    # GATHER and DEQUANTIZE version 2 are the ones that accept int8 data.
    tfl.gather(g, table, ids, rows_q, version=2)
    rows = g.tensor("rows", np.float32, [-1, -1, dim])
    tfl.dequantize(g, rows_q, rows, version=2)
    gathered_scale = g.tensor("row_scale", np.float32, [-1, -1])
    tfl.gather(g, scales, ids, gathered_scale)

    bag_weights = g.tensor("bag_weights", np.float32, [-1, -1])
    tfl.mul(g, weights, gathered_scale, bag_weights)
    last_axis = g.const("last_axis", np.array(2, dtype=np.int32))
    bag_weights_3d = g.tensor("bag_weights_3d", np.float32, [-1, -1, 1])
    tfl.expand_dims(g, bag_weights, last_axis, bag_weights_3d)
    weighted = g.tensor("weighted_rows", np.float32, [-1, -1, dim])
    tfl.mul(g, rows, bag_weights_3d, weighted)
    length_axis = g.const("length_axis", np.array([1], dtype=np.int32))
    bag = g.tensor("bag", np.float32, [-1, dim])
    tfl.reduce_sum(g, weighted, length_axis, bag)

    logits = g.tensor("logits", np.float32, [-1, classes])
    tfl.fully_connected(g, bag, ("dense_w", dense_w), ("dense_b", dense_b), logits, relu=False)
    scores = g.tensor("scores", np.float32, [-1, classes])
    tfl.logistic(g, logits, scores)
    return g.serialize(NAME, [ids, weights], [scores])
