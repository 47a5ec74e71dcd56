"""TFLite graphs for the two model families, written without TensorFlow.

Same inputs, outputs and arithmetic as the ONNX graphs (the emotion graph matches the
int8 ONNX one). The flatbuffer is built with the object API (``ModelT`` ...) that
ai-edge-litert ships in ``schema_py_generated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np

# Internal module of ai-edge-litert (not a public API): we build against and pin
# ai-edge-litert==2.3.0. This file is the only place that imports it.
from ai_edge_litert import schema_py_generated as fb

from models.export.quantize import quantize_rows

_FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3
# The interpreter memory-maps weights and reads them in place: keep each buffer aligned.
_BUFFER_ALIGNMENT = 16
_TENSOR_TYPES = {
    np.dtype(np.float32): fb.TensorType.FLOAT32,
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.int32): fb.TensorType.INT32,
    np.dtype(np.int64): fb.TensorType.INT64,
}


class _AlignedBufferT(fb.BufferT):
    """A BufferT whose data vector is 16-byte aligned (the generated Pack ignores the
    schema's ``force_align: 16``)."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None:
            payload = bytes(self.data)
            builder.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


@dataclass
class _Graph:
    """One subgraph under construction; tensors and ops are appended in execution order."""

    tensors: list[fb.TensorT] = field(default_factory=list)
    operators: list[fb.OperatorT] = field(default_factory=list)
    # Buffer 0 is the empty placeholder every tensor without data points at.
    buffers: list[fb.BufferT] = field(default_factory=lambda: [fb.BufferT()])
    opcodes: dict[tuple[int, int], int] = field(default_factory=dict)

    def tensor(self, name: str, dtype: type, shape: list[int], scale: float | None = None) -> int:
        """An activation; -1 marks a dynamic dim (concrete shape 1 until resized)."""
        t = fb.TensorT()
        t.name = name
        t.type = _TENSOR_TYPES[np.dtype(dtype)]
        t.shape = [1 if d < 0 else d for d in shape]
        if any(d < 0 for d in shape):
            t.shapeSignature = list(shape)
        if scale is not None:
            t.quantization = fb.QuantizationParametersT()
            t.quantization.scale = [scale]
            t.quantization.zeroPoint = [0]
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, value: np.ndarray, scale: float | None = None) -> int:
        value = np.ascontiguousarray(value)
        index = self.tensor(name, value.dtype.type, list(value.shape), scale)
        buffer = _AlignedBufferT()
        buffer.data = value.tobytes()
        self.buffers.append(buffer)
        self.tensors[index].buffer = len(self.buffers) - 1
        return index

    def op(
        self,
        code: int,
        inputs: list[int],
        outputs: list[int],
        options_type: int = fb.BuiltinOptions.NONE,
        options: object = None,
        version: int = 1,
    ) -> None:
        key = (code, version)
        if key not in self.opcodes:
            self.opcodes[key] = len(self.opcodes)
        operator = fb.OperatorT()
        operator.opcodeIndex = self.opcodes[key]
        operator.inputs = inputs
        operator.outputs = outputs
        operator.builtinOptionsType = options_type
        operator.builtinOptions = options
        self.operators.append(operator)

    def serialize(self, name: str, inputs: list[int], outputs: list[int]) -> bytes:
        subgraph = fb.SubGraphT()
        subgraph.name = name
        subgraph.tensors = self.tensors
        subgraph.operators = self.operators
        subgraph.inputs = inputs
        subgraph.outputs = outputs
        model = fb.ModelT()
        model.version = _SCHEMA_VERSION
        model.description = "nexus-edge"
        model.subgraphs = [subgraph]
        model.buffers = self.buffers
        model.operatorCodes = []
        for code, version in self.opcodes:  # dicts keep insertion order = opcode index
            opcode = fb.OperatorCodeT()
            # Codes above 127 live only in builtinCode; all of ours fit both fields.
            opcode.deprecatedBuiltinCode = code
            opcode.builtinCode = code
            opcode.version = version
            model.operatorCodes.append(opcode)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
        return bytes(builder.Output())


def _fully_connected(
    g: _Graph, x: int, weights: tuple[str, np.ndarray], bias: tuple[str, np.ndarray], out: int, relu: bool
) -> None:
    options = fb.FullyConnectedOptionsT()
    options.fusedActivationFunction = fb.ActivationFunctionType.RELU if relu else fb.ActivationFunctionType.NONE
    # TFLite stores FC weights as [out, in], the transpose of our [in, out].
    w_t = g.const(weights[0], np.asarray(weights[1], dtype=np.float32).T)
    b_t = g.const(bias[0], np.asarray(bias[1], dtype=np.float32))
    g.op(fb.BuiltinOperator.FULLY_CONNECTED, [x, w_t, b_t], [out], fb.BuiltinOptions.FullyConnectedOptions, options)


def emotion_tflite(embedding: np.ndarray, dense_w: np.ndarray, dense_b: np.ndarray) -> bytes:
    """The int8 emotion graph: GATHER the int8 rows, DEQUANTIZE them with scale 1 and fold
    the gathered per-row scales into the bag weights (as the int8 ONNX graph does)."""
    q, row_scale = quantize_rows(embedding)
    dim = q.shape[1]
    classes = np.asarray(dense_w).shape[1]
    g = _Graph()
    ids = g.tensor("ids", np.int64, [-1, -1])
    weights = g.tensor("weights", np.float32, [-1, -1])
    table = g.const("embedding_q", q, scale=1.0)
    scales = g.const("embedding_scale", row_scale)

    gather = fb.GatherOptionsT()
    rows_q = g.tensor("rows_q", np.int8, [-1, -1, dim], scale=1.0)
    # GATHER version 2 is the one that accepts int8 data.
    g.op(fb.BuiltinOperator.GATHER, [table, ids], [rows_q], fb.BuiltinOptions.GatherOptions, gather, version=2)
    rows = g.tensor("rows", np.float32, [-1, -1, dim])
    g.op(fb.BuiltinOperator.DEQUANTIZE, [rows_q], [rows], version=2)
    gathered_scale = g.tensor("row_scale", np.float32, [-1, -1])
    g.op(fb.BuiltinOperator.GATHER, [scales, ids], [gathered_scale], fb.BuiltinOptions.GatherOptions, gather)

    bag_weights = g.tensor("bag_weights", np.float32, [-1, -1])
    mul = fb.MulOptionsT()
    g.op(fb.BuiltinOperator.MUL, [weights, gathered_scale], [bag_weights], fb.BuiltinOptions.MulOptions, mul)
    last_axis = g.const("last_axis", np.array(2, dtype=np.int32))
    bag_weights_3d = g.tensor("bag_weights_3d", np.float32, [-1, -1, 1])
    g.op(
        fb.BuiltinOperator.EXPAND_DIMS,
        [bag_weights, last_axis],
        [bag_weights_3d],
        fb.BuiltinOptions.ExpandDimsOptions,
        fb.ExpandDimsOptionsT(),
    )
    weighted = g.tensor("weighted_rows", np.float32, [-1, -1, dim])
    g.op(fb.BuiltinOperator.MUL, [rows, bag_weights_3d], [weighted], fb.BuiltinOptions.MulOptions, mul)
    length_axis = g.const("length_axis", np.array([1], dtype=np.int32))
    reducer = fb.ReducerOptionsT()
    reducer.keepDims = False
    bag = g.tensor("bag", np.float32, [-1, dim])
    g.op(fb.BuiltinOperator.SUM, [weighted, length_axis], [bag], fb.BuiltinOptions.ReducerOptions, reducer)

    logits = g.tensor("logits", np.float32, [-1, classes])
    _fully_connected(g, bag, ("dense_w", dense_w), ("dense_b", dense_b), logits, relu=False)
    scores = g.tensor("scores", np.float32, [-1, classes])
    g.op(fb.BuiltinOperator.LOGISTIC, [logits], [scores])
    return g.serialize("emotion", [ids, weights], [scores])


def funnel_tflite(layers: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """fp32 FULLY_CONNECTED chain (ReLU fused between layers), LOGISTIC at the end."""
    if not layers:
        raise ValueError("funnel_tflite needs at least one layer")
    g = _Graph()
    features = g.tensor("features", np.float32, [-1, np.asarray(layers[0][0]).shape[0]])
    x = features
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        out = g.tensor("logits" if last else f"h{i}", np.float32, [-1, np.asarray(w).shape[1]])
        _fully_connected(g, x, (f"w{i}", w), (f"b{i}", b), out, relu=not last)
        x = out
    probability = g.tensor("probability", np.float32, [-1, np.asarray(layers[-1][0]).shape[1]])
    g.op(fb.BuiltinOperator.LOGISTIC, [x], [probability])
    return g.serialize("funnel", [features], [probability])
