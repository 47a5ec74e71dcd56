"""Open Inference Protocol v2 (KServe / Triton) JSON tensors for the two model families.

Each model is served with its featurizer in front, like a Triton ensemble: emotion takes
a BYTES tensor ``text`` [B] and returns FP32 ``scores`` [B, labels]; funnel takes a BYTES
tensor ``session`` [B] (each element a JSON object, or the object itself) and returns
FP32 ``probability`` [B].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from edge_worker.errors import ApiError, describe
from edge_worker.repository import Served
from edge_worker.schemas import InferRequest, Session
from edge_worker.settings import EdgeSettings

_PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx-int8": "onnxruntime_onnx", "tflite": "tflite"}
_SESSION = TypeAdapter(Session)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def io_specs(model: str, manifest: dict[str, Any]) -> tuple[TensorSpec, TensorSpec]:
    if model == "emotion":
        return TensorSpec("text", "BYTES", (-1,)), TensorSpec("scores", "FP32", (-1, len(manifest["labels"])))
    return TensorSpec("session", "BYTES", (-1,)), TensorSpec("probability", "FP32", (-1,))


def metadata(served: Served, versions: list[str]) -> dict[str, Any]:
    inp, out = io_specs(served.name, served.manifest)
    return {
        "name": served.name,
        "versions": versions,
        "platform": _PLATFORMS.get(served.predictor.backend, served.predictor.backend),
        "inputs": [inp.as_dict()],
        "outputs": [out.as_dict()],
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


def decode_items(served: Served, request: InferRequest, settings: EdgeSettings) -> list[Any]:
    """The texts or sessions carried by an infer request, checked against the model's input."""
    spec, out = io_specs(served.name, served.manifest)
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
    limit = settings.max_texts if served.name == "emotion" else settings.max_sessions
    if not 1 <= count <= limit:
        raise ApiError(422, f"input {spec.name!r} must hold 1 to {limit} elements, got {count}")
    if served.name == "emotion":
        return [_text(i, v, settings.max_text_chars) for i, v in enumerate(values)]
    return [_session(i, v) for i, v in enumerate(values)]


def _text(index: int, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ApiError(422, f"text[{index}]: BYTES elements must be strings")
    if not value.strip():
        raise ApiError(422, f"text[{index}]: empty text")
    if len(value) > max_chars:
        raise ApiError(422, f"text[{index}]: {len(value)} characters exceeds the limit of {max_chars}")
    return value


def _session(index: int, value: Any) -> dict[str, Any]:
    try:
        if isinstance(value, str):
            return _SESSION.validate_json(value)
        return _SESSION.validate_python(value, strict=False)
    except ValidationError as exc:
        raise ApiError(422, f"session[{index}]: {describe(exc)}") from None


def encode(served_name: str, scores: np.ndarray, version: str, request_id: str | None) -> dict[str, Any]:
    name = "scores" if served_name == "emotion" else "probability"
    scores = np.asarray(scores, dtype=np.float32)
    body: dict[str, Any] = {
        "model_name": served_name,
        "model_version": version,
        "outputs": [{"name": name, "shape": list(scores.shape), "datatype": "FP32", "data": scores.ravel().tolist()}],
    }
    if request_id is not None:
        body["id"] = request_id
    return body
