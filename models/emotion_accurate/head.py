"""The accurate tier's classification head inside its ONNX graphs: found by structure, read, swapped.

A federated round trains only the head (``task.py``), so a federated update becomes a
bundle by copying the base bundle's graphs and replacing the head's two initializers.
That needs the head in fp32 in every graph: ``export.quantize_onnx`` keeps it out of
the int8 quantization. The head is found by what it computes, not by node names (the
exporter and onnxruntime's quantizer both rename nodes): ``scores = Sigmoid(features @ W + b)``
as one Gemm, or as the MatMul + Add the quantizer splits a Gemm into. onnx and numpy only:
the hub exports updates without torch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from models.bundle import ARTIFACTS, verify_bundle
from models.emotion_accurate import HEAD_B, HEAD_W
from models.emotion_accurate.tokens import TokenSpec
from models.errors import NexusError

#: graph outputs of the accurate tier's artifacts (export.OUTPUTS)
SCORES, FEATURES = "scores", "features"


@dataclass(frozen=True)
class HeadRef:
    """Where the head lives in a graph: its weight and bias initializers and the weight's layout."""

    #: the node(s) computing ``features @ W + b`` (the quantizer's nodes_to_exclude)
    nodes: tuple[str, ...]
    weight: str
    bias: str
    #: the weight initializer is stored [labels, hidden] (Gemm transB=1) rather than [hidden, labels]
    transposed: bool


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            return float(onnx.helper.get_attribute_value(attribute))
    return default


def find_head(model: onnx.ModelProto) -> HeadRef:
    """The head of an accurate-tier graph; NexusError if the graph does not end in one."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    inits = {init.name for init in graph.initializer}
    sigmoid = producer.get(SCORES)
    if sigmoid is None or sigmoid.op_type != "Sigmoid":
        raise NexusError(f"graph output {SCORES!r} is not a Sigmoid: not an accurate-tier graph")
    linear = producer.get(sigmoid.input[0])
    if linear is not None and linear.op_type == "Gemm":
        a, w, b = (list(linear.input) + ["", ""])[:3]
        plain = (
            _attr(linear, "alpha", 1.0) == 1.0 and _attr(linear, "beta", 1.0) == 1.0 and not _attr(linear, "transA", 0)
        )
        if a == FEATURES and w in inits and b in inits and plain:
            return HeadRef((linear.name,), w, b, transposed=bool(_attr(linear, "transB", 0)))
    if linear is not None and linear.op_type == "Add" and len(linear.input) == 2:
        for x, b in (tuple(linear.input), tuple(reversed(linear.input))):
            matmul = producer.get(x)
            fp32_matmul = matmul is not None and matmul.op_type == "MatMul" and matmul.input[1] in inits
            if b in inits and matmul is not None and fp32_matmul and matmul.input[0] == FEATURES:
                return HeadRef((matmul.name, linear.name), matmul.input[1], b, transposed=False)
    raise NexusError(
        f"the node feeding {SCORES!r} is not an fp32 linear layer on {FEATURES!r}"
        " (quantized head? export.quantize_onnx keeps it fp32 so federated updates can replace it)"
    )


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    raise NexusError(f"graph has no initializer {name!r}")


def read_head(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The head's fp32 weights as the federated task holds them: head_w [H, C], head_b [C]."""
    ref = find_head(model)
    w = numpy_helper.to_array(_initializer(model, ref.weight))
    b = numpy_helper.to_array(_initializer(model, ref.bias))
    if w.dtype != np.float32 or b.dtype != np.float32 or w.ndim != 2 or b.ndim != 1:
        raise NexusError(f"head initializers must be fp32 [2-D] and [1-D], got {w.dtype}{w.shape}, {b.dtype}{b.shape}")
    w = w.T if ref.transposed else w
    return {HEAD_W: np.ascontiguousarray(w), HEAD_B: b.copy()}


def write_head(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Replace the head's initializers in place; the new arrays must have the old shapes."""
    ref = find_head(model)
    current = read_head(model)
    for key in (HEAD_W, HEAD_B):
        got = np.asarray(weights.get(key))
        if key not in weights or got.shape != current[key].shape:
            raise NexusError(f"update {key} has shape {got.shape}, the base head has {current[key].shape}")
        if not np.all(np.isfinite(got)):
            raise NexusError(f"update {key} holds non-finite values")
    w = np.asarray(weights[HEAD_W], np.float32)
    w = w.T if ref.transposed else w
    for name, value in ((ref.weight, w), (ref.bias, np.asarray(weights[HEAD_B], np.float32))):
        _initializer(model, name).CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def export_update(weights: dict[str, np.ndarray], base: Path, folder: Path) -> None:
    """A federated head's artifacts in ``folder``: the base bundle's ONNX graphs with the head replaced.

    The encoder is byte for byte the base's (the edges trained on its features); TFLite is
    not rewritten (its flatbuffer has no initializers to swap), so a candidate ships ONNX.
    """
    extra = sorted(set(weights) - {HEAD_W, HEAD_B})
    if extra:
        raise NexusError(f"an accurate-tier update holds only {HEAD_W} and {HEAD_B}, not {extra}")
    bundle = verify_bundle(base)
    graphs = [b for b in ("onnx", "onnx-int8") if b in bundle.backends]
    if not graphs:
        raise NexusError(f"{base}: no ONNX artifact to put the federated head into")
    for backend in graphs:
        model = onnx.load_model(str(bundle.artifact(backend)))
        write_head(model, weights)
        onnx.save_model(model, str(Path(folder) / ARTIFACTS[backend]))
    tokenizer = TokenSpec.from_dict(bundle.manifest["featurizer"]).tokenizer
    shutil.copyfile(bundle.path / tokenizer, Path(folder) / tokenizer)
