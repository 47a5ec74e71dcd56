"""Open Inference Protocol v2 (KServe / Triton) JSON tensors, for any family in the registry.

Each model is served with its featurizer in front, like a Triton ensemble: it takes one
BYTES tensor of items (``Serving.oip_input``: emotion ``text`` [B], funnel ``session`` [B],
each element a JSON object or the object itself) and returns one FP32 tensor
(``Serving.oip_output``: emotion ``scores`` [B, labels], funnel ``probability`` [B]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge_worker.repository import Served
from edge_worker.schemas import InferRequest
from models.errors import DataError
from models.family import Family
from nexus_service.http import ApiError, describe

_PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx-int8": "onnxruntime_onnx", "tflite": "tflite"}


def metadata(family: Family, served: Served, versions: list[str]) -> dict[str, Any]:
    return {
        "name": served.name,
        "versions": versions,
        "platform": _PLATFORMS.get(served.predictor.backend, served.predictor.backend),
        "inputs": [family.serving.oip_input.as_dict()],
        "outputs": [family.serving.oip_output(served.manifest).as_dict()],
    }


def _flatten(data: list[Any], rank: int) -> list[Any]:
    """Row-major flattening of nested lists no deeper than the tensor's rank (no recursion)."""
    flat: list[Any] = []
    stack: list[tuple[list[Any], int, int]] = [(data, 0, 1)]
    while stack:
        values, index, depth = stack.pop()
        while index < len(values):
            value = values[index]
            index += 1
            if isinstance(value, list):
                if depth >= rank:
                    raise ApiError(400, f"tensor data is nested deeper than its shape's {rank} dimension(s)")
                stack.append((values, index, depth))
                stack.append((value, 0, depth + 1))
                break
            flat.append(value)
    return flat


def decode_items(family: Family, served: Served, request: InferRequest, limits: Mapping[str, int]) -> list[Any]:
    """The items an infer request carries, checked against the family's input and the node's limits."""
    spec, out = family.serving.oip_input, family.serving.oip_output(served.manifest)
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        names = ", ".join(t.name for t in request.inputs)
        raise ApiError(400, f"model {served.name!r} takes one input {spec.name!r}; got {names}")
    for wanted in request.outputs or []:
        if wanted.name != out.name:
            raise ApiError(400, f"model {served.name!r} has no output {wanted.name!r} (it has {out.name!r})")
    tensor = request.inputs[0]
    if tensor.datatype != spec.datatype:
        raise ApiError(400, f"input {spec.name!r} must have datatype {spec.datatype}, got {tensor.datatype}")
    if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise ApiError(400, f"input {spec.name!r} must have shape [B] or [B, 1], got {tensor.shape}")
    values = _flatten(tensor.data, len(tensor.shape))
    count = math.prod(tensor.shape)
    if count != len(values):
        raise ApiError(
            400, f"input {spec.name!r} has shape {tensor.shape} ({count} elements) but {len(values)} data elements"
        )
    limit = limits[family.serving.max_items]
    if not 1 <= count <= limit:
        raise ApiError(422, f"input {spec.name!r} must hold 1 to {limit} elements, got {count}")
    items = []
    for index, value in enumerate(values):
        try:
            items.append(family.serving.oip_item(value, limits))
        except ValidationError as exc:
            raise ApiError(422, f"{spec.name}[{index}]: {describe(exc)}") from None
        except DataError as exc:
            raise ApiError(422, f"{spec.name}[{index}]: {exc}") from None
    return items


def encode(family: Family, served: Served, rows: list[Any], request_id: str | None) -> dict[str, Any]:
    """The infer answer: the family's output tensor of one batch's answer rows."""
    values = np.asarray(family.serving.oip_values(rows), dtype=np.float32)
    name = family.serving.oip_output(served.manifest).name
    body: dict[str, Any] = {
        "model_name": served.name,
        "model_version": served.version,
        "outputs": [{"name": name, "shape": list(values.shape), "datatype": "FP32", "data": values.ravel().tolist()}],
    }
    if request_id is not None:
        body["id"] = request_id
    return body
