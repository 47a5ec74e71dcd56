"""OIP v2 inference over HTTP: JSON tensors and the binary tensor data extension, both ways.

With the extension (what ``tritonclient.http`` sends by default) the request body is a JSON
header of ``Inference-Header-Content-Length`` bytes, then the raw bytes of each input whose
``parameters.binary_data_size`` is set, in input order. An output is answered the same way
when its ``parameters.binary_data`` (default: the request's ``parameters.binary_data_output``)
is true: the JSON header then gives its ``binary_data_size`` instead of ``data``, and the
response carries ``Inference-Header-Content-Length``. Tensor semantics are
:mod:`edge_worker.oip`'s, shared with gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response

from edge_worker import oip, oip_tensors
from edge_worker.oip import OutputTensor, WireTensor
from edge_worker.outputs import FastJSONResponse
from edge_worker.schemas import InferRequest
from nexus_service.http import ApiError, read_body, validate_json

HEADER = "Inference-Header-Content-Length"
BINARY_TYPE = "application/octet-stream"


def _split(body: bytes, declared: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it."""
    if declared is None:
        return body, b""
    if not declared.strip().isdigit():
        raise ApiError(400, f"{HEADER} header is not a number: {declared[:40]!r}")
    size = int(declared)
    if size > len(body):
        raise ApiError(400, f"{HEADER} header says {size} bytes of JSON, but the body has only {len(body)}")
    return body[:size], body[size:]


def wire_tensors(request: InferRequest, binary: bytes, framed: bool) -> list[WireTensor]:
    """The request's inputs, each with its JSON data or its slice of the binary data."""
    tensors, offset = [], 0
    for tensor in request.inputs:
        parameters = tensor.parameters
        size = parameters.binary_data_size if parameters is not None else None
        if parameters is not None:
            oip.refuse_unsupported(f"input {tensor.name!r}", (parameters.model_extra or {}).keys())
        if size is None:
            if tensor.data is None:
                raise ApiError(400, f"input {tensor.name!r} has no data and no parameters.binary_data_size")
            tensors.append(WireTensor(tensor.name, tensor.datatype, tuple(tensor.shape), tensor.data))
            continue
        if not framed:
            raise ApiError(400, f"input {tensor.name!r} sets binary_data_size, but the request has no {HEADER} header")
        if tensor.data is not None:
            raise ApiError(400, f"input {tensor.name!r} has both data and binary_data_size")
        if offset + size > len(binary):
            raise ApiError(
                400,
                f"input {tensor.name!r}: binary_data_size {size} runs past the {len(binary)} bytes of binary data",
            )
        tensors.append(WireTensor(tensor.name, tensor.datatype, tuple(tensor.shape), binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise ApiError(
            400, f"the body has {len(binary)} bytes of binary data, but the inputs' binary_data_size sum to {offset}"
        )
    return tensors


async def read_request(request: Request, limit: int) -> tuple[InferRequest, list[WireTensor]]:
    """An infer request's JSON header and input tensors, from JSON or the binary extension."""
    declared = request.headers.get(HEADER)
    header, binary = _split(await read_body(request, limit), declared)
    parsed = validate_json(header, InferRequest)
    if parsed.parameters is not None:
        oip.refuse_unsupported("parameters", (parsed.parameters.model_extra or {}).keys())
    for output in parsed.outputs or []:
        if output.parameters is not None:
            oip.refuse_unsupported(f"output {output.name!r}", (output.parameters.model_extra or {}).keys())
    return parsed, wire_tensors(parsed, binary, declared is not None)


def _wants_binary(request: InferRequest) -> dict[str, bool]:
    default = bool(request.parameters and request.parameters.binary_data_output)
    wanted = {}
    for output in request.outputs or []:
        flag = output.parameters.binary_data if output.parameters is not None else None
        wanted[output.name] = default if flag is None else flag
    return wanted


def response(request: InferRequest, model: str, version: str, outputs: Sequence[OutputTensor]) -> Response:
    """The answer: the asked-for outputs (all without ``outputs``), each as JSON data or raw bytes."""
    wanted = _wants_binary(request)
    default = bool(request.parameters and request.parameters.binary_data_output)
    chosen = [o for o in outputs if o.name in wanted] if request.outputs else list(outputs)
    tensors, raw = [], []
    for output in chosen:
        tensor: dict[str, object] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if wanted.get(output.name, default):
            data = oip_tensors.to_raw(output.datatype, output.values)
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            tensor["data"] = oip_tensors.to_elements(output.datatype, output.values)
        tensors.append(tensor)
    body: dict[str, object] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.id is not None:
        body["id"] = request.id
    answer = FastJSONResponse(body)
    if not raw:
        return answer
    return Response(b"".join((answer.body, *raw)), media_type=BINARY_TYPE, headers={HEADER: str(len(answer.body))})
