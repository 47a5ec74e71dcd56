"""OIP v2 over gRPC: KServe's ``inference.GRPCInferenceService`` on a port of its own beside HTTP.

The server runs in the app's lifespan on the worker's event loop (``grpc.aio``), so its calls
share the micro-batchers, the model repository and the limits with HTTP; this module maps
messages to and from the transport-neutral semantics of :mod:`edge_worker.oip`. Inputs come as
``raw_input_contents`` (what ``tritonclient.grpc`` sends) or as typed ``contents``; outputs are
answered the same way the inputs came. Errors carry the HTTP answer's message with the
matching status code (422 and 400: INVALID_ARGUMENT, 404: NOT_FOUND, 503: UNAVAILABLE,
429: RESOURCE_EXHAUSTED).

The message classes are built at import from ``proto/grpc_predict_v2.pb`` (compiled from the
``.proto`` beside it) in a descriptor pool of their own: a client's stubs of the same
``inference.*`` messages (tritonclient's) can be imported into the same process.

With ``--workers N`` every worker binds the port with SO_REUSEPORT and the kernel spreads
connections over them; a gRPC channel is one long-lived connection, so its calls all go to one
worker: a client wanting every worker opens several channels.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from edge_worker import oip
from edge_worker.batcher import Overloaded
from edge_worker.oip import OutputTensor, WireTensor
from edge_worker.oip_tensors import to_raw
from edge_worker.repository import ModelNotReady
from edge_worker.state import EdgeState
from models.errors import DataError
from nexus_service.http import ApiError

log = logging.getLogger("nexus.edge.grpc")
SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR = Path(__file__).parent / "proto" / "grpc_predict_v2.pb"
_POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes()).file:
    _POOL.Add(_file)


def message(name: str) -> Any:
    """The class of message ``inference.<name>`` (``ModelInferRequest.InferInputTensor`` for a nested one)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveResponse = message("ServerLiveResponse")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")

#: the typed-contents field of each datatype (FP16 and BF16 have none: raw only)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CODES = {404: grpc.StatusCode.NOT_FOUND, 503: grpc.StatusCode.UNAVAILABLE, 401: grpc.StatusCode.UNAUTHENTICATED}


def _parameter_names(parameters: Any) -> list[str]:
    return list(parameters.keys())


def wire_tensors(request: Any) -> list[WireTensor]:
    """The request's inputs, from ``raw_input_contents`` (one entry per input, in order) or typed contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ApiError(400, f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        oip.refuse_unsupported(f"input {tensor.name!r}", _parameter_names(tensor.parameters))
        shape = tuple(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise ApiError(400, f"input {tensor.name!r} has contents, but the request uses raw_input_contents")
            tensors.append(WireTensor(tensor.name, tensor.datatype, shape, raw[index]))
            continue
        field = CONTENTS.get(tensor.datatype)
        if field is None:
            raise ApiError(400, f"input {tensor.name!r}: {tensor.datatype} data must come as raw_input_contents")
        tensors.append(WireTensor(tensor.name, tensor.datatype, shape, list(getattr(tensor.contents, field))))
    return tensors


def _output(response: Any, output: OutputTensor, raw: bool) -> None:
    tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
    if raw:
        response.raw_output_contents.append(to_raw(output.datatype, output.values))
    else:
        getattr(tensor.contents, CONTENTS[output.datatype]).extend(output.values.ravel().tolist())


class Inference:
    """The service's calls against one edge's state (each takes a request message, returns the
    response); the methods carry the protocol's names."""

    def __init__(self, state: EdgeState) -> None:
        self.state = state

    async def ServerLive(self, request: Any) -> Any:
        return ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any) -> Any:
        return ServerReadyResponse(ready=self.state.repository.ready())

    async def ModelReady(self, request: Any) -> Any:
        return ModelReadyResponse(ready=oip.model_ready(self.state, request.name, request.version))

    async def ServerMetadata(self, request: Any) -> Any:
        return ServerMetadataResponse(**oip.server_metadata())

    async def ModelMetadata(self, request: Any) -> Any:
        family, served = oip.resolve(self.state, request.name, request.version)
        metadata = oip.metadata(family, served, self.state.repository.versions(served.name))
        return json_format.ParseDict(metadata, ModelMetadataResponse())

    async def ModelInfer(self, request: Any) -> Any:
        state = self.state
        family, served = oip.resolve(state, request.model_name, request.model_version)
        oip.refuse_unsupported("parameters", _parameter_names(request.parameters))
        for wanted in request.outputs:
            oip.refuse_unsupported(f"output {wanted.name!r}", _parameter_names(wanted.parameters))
        oip.check_outputs(family, served, [wanted.name for wanted in request.outputs])
        items = oip.decode_items(family, served, wire_tensors(request), state.limits[served.name])
        result = await state.batchers[served.name].submit(items)
        response = ModelInferResponse(model_name=served.name, model_version=result.source.version, id=request.id)
        names = {wanted.name for wanted in request.outputs}
        for output in oip.outputs(family, result.source, list(result.rows)):
            if not names or output.name in names:
                _output(response, output, raw=bool(request.raw_input_contents))
        return response


Call = Callable[[Any], Awaitable[Any]]


def _guarded(call: Call) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """The HTTP answer's refusal as a gRPC status; anything unexpected is logged, answered INTERNAL."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await call(request)
        except ApiError as exc:
            code, details = _CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message
        except ModelNotReady as exc:
            code, details = grpc.StatusCode.UNAVAILABLE, str(exc)
        except Overloaded as exc:
            code, details = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
        except DataError as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Exception:
            log.exception("gRPC %s failed", call.__name__)
            code, details = grpc.StatusCode.INTERNAL, "internal error; see the node's log"
        await context.abort(code, details)

    return handle


#: method -> request message (its response is the method's own)
METHODS = {
    "ServerLive": "ServerLiveRequest",
    "ServerReady": "ServerReadyRequest",
    "ModelReady": "ModelReadyRequest",
    "ServerMetadata": "ServerMetadataRequest",
    "ModelMetadata": "ModelMetadataRequest",
    "ModelInfer": "ModelInferRequest",
}


def handler(state: EdgeState) -> grpc.GenericRpcHandler:
    service = Inference(state)
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            method: grpc.unary_unary_rpc_method_handler(
                _guarded(getattr(service, method)),
                request_deserializer=message(request).FromString,
                response_serializer=lambda response: response.SerializeToString(),
            )
            for method, request in METHODS.items()
        },
    )


async def start(state: EdgeState, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The gRPC server of this worker, started; and the port it bound (``port`` 0: a free one)."""
    settings = state.settings
    options = [
        # several workers share the port; a lone one must not share it with an unrelated server
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ("grpc.max_receive_message_length", settings.max_body_bytes),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler(state),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"gRPC could not bind {address}: {exc}") from None
    await server.start()
    log.info("OIP v2 gRPC on %s:%d", host, bound)
    return server, bound
