"""Open Inference Protocol v2 (KServe / Triton) for any family in the registry, whatever the transport.

HTTP (JSON tensors or the binary tensor data extension, :mod:`edge_worker.oip_http`) and gRPC
(:mod:`edge_worker.oip_grpc`) parse their framing into :class:`WireTensor` records; this
module is the one place that checks them against the family's inputs and the node's limits,
decodes their elements (:mod:`edge_worker.oip_tensors`), builds the items the micro-batcher
runs and makes the output tensors of the answer rows.

Each model is served with its featurizer in front, like a Triton ensemble, and takes one of
its family's input sets (``Serving.oip_inputs``), every tensor of shape [B] or [B, 1]:
emotion one BYTES tensor ``text``; funnel one tensor per session field (FP64 numbers, BYTES
categories, BOOL flags; advertised) or one BYTES tensor ``session`` of JSON sessions. It
returns one FP32 tensor (``Serving.oip_output``: emotion ``scores`` [B, labels], funnel
``probability`` [B]).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge_worker import oip_tensors
from edge_worker.repository import Served
from edge_worker.state import EdgeState
from models.errors import DataError
from models.family import Family, Tensor
from nexus_service.http import ApiError, describe

SERVER_NAME = "nexus-edge"
SERVER_VERSION = "0.1.0"
#: the protocol extensions the edge speaks (Triton's names), in the server metadata
EXTENSIONS = ("binary_tensor_data",)
_PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx-int8": "onnxruntime_onnx", "tflite": "tflite"}
#: parameters of extensions the edge does not speak: refused rather than ignored
_UNSUPPORTED = {
    "shared_memory_region": "shared memory is not supported: send the tensor data in the request",
    "classification": "the classification extension is not supported: ask for the full output",
}


@dataclass(frozen=True)
class WireTensor:
    """An input tensor as a transport received it: JSON data or gRPC typed contents (a list),
    or raw tensor bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any] | bytes


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


def known_model(state: EdgeState, name: str) -> str:
    if name not in state.repository.models:
        raise ApiError(404, f"unknown model {name!r}; this node serves {', '.join(state.repository.models)}")
    return name


def resolve(state: EdgeState, name: str, version: str | None = None) -> tuple[Family, Served]:
    """The family and loaded version of a served model; ``version`` (if given) must be the one loaded."""
    served = state.served(known_model(state, name))  # ModelNotReady (503) while none is loaded
    if version and version != served.version:
        raise ApiError(404, f"model {name!r} serves version {served.version}, not {version!r}")
    return state.families.get(name), served


def model_ready(state: EdgeState, name: str, version: str | None = None) -> bool:
    served = state.repository.get(known_model(state, name))
    return served is not None and (not version or version == served.version)


def metadata(family: Family, served: Served, versions: list[str]) -> dict[str, Any]:
    advertised = family.serving.oip_inputs(served.predictor)[0]
    return {
        "name": served.name,
        "versions": versions,
        "platform": _PLATFORMS.get(served.predictor.backend, served.predictor.backend),
        "inputs": [tensor.as_dict() for tensor in advertised],
        "outputs": [family.serving.oip_output(served.manifest).as_dict()],
    }


def refuse_unsupported(where: str, parameters: Iterable[str]) -> None:
    for name in parameters:
        if name in _UNSUPPORTED:
            raise ApiError(400, f"{where}: {_UNSUPPORTED[name]}")


def _describe(form: Sequence[Tensor]) -> str:
    if len(form) == 1:
        return f"one input {form[0].name!r}"
    return f"the {len(form)} inputs {', '.join(t.name for t in form)}"


def _match(model: str, forms: Sequence[tuple[Tensor, ...]], names: list[str]) -> tuple[Tensor, ...]:
    """The input set whose names the request gives, exactly once each."""
    given = set(names)
    for name in given:
        if names.count(name) > 1:
            raise ApiError(400, f"input {name!r} is given {names.count(name)} times")
    for form in forms:
        if given == {t.name for t in form}:
            return form
    message = f"model {model!r} takes {' or '.join(_describe(form) for form in forms)}; got {', '.join(names)}"
    closest = max(forms, key=lambda form: len(given & {t.name for t in form}))
    wanted = {t.name for t in closest}
    if len(closest) > 1 and given & wanted:
        missing, unknown = sorted(wanted - given), sorted(given - wanted)
        message += "".join(
            f"; {what}: {', '.join(which)}" for what, which in (("missing", missing), ("unknown", unknown)) if which
        )
    raise ApiError(400, message)


def _batch_size(spec: Tensor, tensor: WireTensor) -> int:
    datatypes = (spec.datatype, *spec.accepts)
    if tensor.datatype not in datatypes:
        raise ApiError(400, f"input {spec.name!r} must have datatype {' or '.join(datatypes)}, got {tensor.datatype}")
    shape = list(tensor.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ApiError(400, f"input {spec.name!r} must have shape [B] or [B, 1], got {shape}")
    return shape[0]


def decode_items(family: Family, served: Served, tensors: Sequence[WireTensor], limits: Mapping[str, int]) -> list[Any]:
    """The items a request's input tensors carry, checked against the family's inputs and the node's limits.

    Names, datatypes, shapes and the batch size are checked before any element is decoded,
    so a request's declared sizes are bounded by the node's limits before they are trusted.
    """
    serving = family.serving
    form = _match(served.name, serving.oip_inputs(served.predictor), [t.name for t in tensors])
    by_name = {t.name: t for t in tensors}
    sizes = {spec.name: _batch_size(spec, by_name[spec.name]) for spec in form}
    count = sizes[form[0].name]
    if any(size != count for size in sizes.values()):
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise ApiError(400, f"the inputs must hold as many elements each; got {listed}")
    limit = limits[serving.max_items]
    if not 1 <= count <= limit:
        what = f"input {form[0].name!r}" if len(form) == 1 else "each input"
        raise ApiError(422, f"{what} must hold 1 to {limit} elements, got {count}")
    columns = {}
    for spec in form:
        tensor = by_name[spec.name]
        if isinstance(tensor.data, bytes):
            columns[spec.name] = oip_tensors.from_raw(spec.name, tensor.datatype, tensor.shape, tensor.data)
        else:
            columns[spec.name] = oip_tensors.from_elements(spec.name, tensor.datatype, tensor.shape, tensor.data)
    items = []
    for index in range(count):
        where = f"{form[0].name}[{index}]" if len(form) == 1 else f"item {index}"
        try:
            items.append(serving.oip_item({name: column[index] for name, column in columns.items()}, limits))
        except ValidationError as exc:
            raise ApiError(422, f"{where}: {describe(exc)}") from None
        except DataError as exc:
            raise ApiError(422, f"{where}: {exc}") from None
    return items


def check_outputs(family: Family, served: Served, names: Sequence[str]) -> None:
    """The outputs a request asks for must be the model's."""
    output = family.serving.oip_output(served.manifest).name
    for name in names:
        if name != output:
            raise ApiError(400, f"model {served.name!r} has no output {name!r} (it has {output!r})")


def outputs(family: Family, served: Served, rows: list[Any]) -> list[OutputTensor]:
    """The output tensors of one request's answer rows."""
    spec = family.serving.oip_output(served.manifest)
    values = np.asarray(family.serving.oip_values(rows), dtype=oip_tensors.FIXED.get(spec.datatype, object))
    return [OutputTensor(spec.name, spec.datatype, tuple(values.shape), values)]
