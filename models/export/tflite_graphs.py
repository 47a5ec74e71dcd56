"""Generic TFLite graph builder and op helpers, written without TensorFlow; each family
builds its own graphs with them (models/<family>/graphs.py).

The flatbuffer is built with the object API (``ModelT`` ...) that ai-edge-litert ships in
``schema_py_generated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np

# Internal module of ai-edge-litert (not a public API): we build against and pin
# ai-edge-litert==2.3.0. This file is the only place that imports it.
from ai_edge_litert import schema_py_generated as fb

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
class Graph:
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
        """A constant tensor whose data is ``value``, in its own aligned buffer."""
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
        """Append a builtin op over tensor indices; each (code, version) gets one opcode."""
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
        """The finished ``.tflite`` file: one subgraph called ``name``."""
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


def fully_connected(
    g: Graph, x: int, weights: tuple[str, np.ndarray], bias: tuple[str, np.ndarray], out: int, relu: bool
) -> None:
    """``out = x @ w + b`` (ReLU fused when ``relu``) with named fp32 ``w`` [in, out] and ``b``."""
    options = fb.FullyConnectedOptionsT()
    options.fusedActivationFunction = fb.ActivationFunctionType.RELU if relu else fb.ActivationFunctionType.NONE
    # TFLite stores FC weights as [out, in], the transpose of our [in, out].
    w_t = g.const(weights[0], np.asarray(weights[1], dtype=np.float32).T)
    b_t = g.const(bias[0], np.asarray(bias[1], dtype=np.float32))
    g.op(fb.BuiltinOperator.FULLY_CONNECTED, [x, w_t, b_t], [out], fb.BuiltinOptions.FullyConnectedOptions, options)


def gather(g: Graph, params: int, indices: int, out: int, version: int = 1) -> None:
    """``out = params[indices]`` along axis 0."""
    options = fb.GatherOptionsT()
    g.op(fb.BuiltinOperator.GATHER, [params, indices], [out], fb.BuiltinOptions.GatherOptions, options, version)


def dequantize(g: Graph, x: int, out: int, version: int = 1) -> None:
    """``out = (x - zero_point) * scale``, from ``x``'s quantization parameters."""
    g.op(fb.BuiltinOperator.DEQUANTIZE, [x], [out], version=version)


def mul(g: Graph, a: int, b: int, out: int) -> None:
    """``out = a * b`` (broadcasting)."""
    g.op(fb.BuiltinOperator.MUL, [a, b], [out], fb.BuiltinOptions.MulOptions, fb.MulOptionsT())


def expand_dims(g: Graph, x: int, axis: int, out: int) -> None:
    """``out = x`` with a dim of 1 inserted at the int32 scalar tensor ``axis``."""
    g.op(fb.BuiltinOperator.EXPAND_DIMS, [x, axis], [out], fb.BuiltinOptions.ExpandDimsOptions, fb.ExpandDimsOptionsT())


def reduce_sum(g: Graph, x: int, axes: int, out: int, keep_dims: bool = False) -> None:
    """``out = x`` summed over the int32 tensor ``axes``."""
    options = fb.ReducerOptionsT()
    options.keepDims = keep_dims
    g.op(fb.BuiltinOperator.SUM, [x, axes], [out], fb.BuiltinOptions.ReducerOptions, options)


def logistic(g: Graph, x: int, out: int) -> None:
    """``out = sigmoid(x)``."""
    g.op(fb.BuiltinOperator.LOGISTIC, [x], [out])
