"""Generic ONNX helpers; each family builds its own graphs with them (models/<family>/graphs.py).

Graphs are built with ``onnx.helper``; ``build_model`` stamps opset, IR version and producer,
``save`` checks a graph before writing it and ``read_initializers`` gives the fp32 weights
back to training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.errors import NexusError

OPSET = 17
# onnx 1.23 writes IR 14 by default, which onnxruntime rejects.
IR_VERSION = 9
PRODUCER = "nexus-edge"


def initializer(name: str, value: np.ndarray) -> TensorProto:
    """A named constant tensor holding ``value`` (made contiguous)."""
    return numpy_helper.from_array(np.ascontiguousarray(value), name=name)


def build_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """The graph as a model of our opset, IR version and producer."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = IR_VERSION
    return model


def save(model: onnx.ModelProto, path: Path) -> None:
    """Check the graph (types and shapes included), then write it."""
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def read_initializers(path: Path) -> dict[str, np.ndarray]:
    """The fp32 weights of an fp32 artifact by initializer name.

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
