"""OIP v2 over gRPC in process: the edge's own messages, typed contents of every kind the funnel
takes, refusals as status codes, the port setting, and the compiled descriptor matching its .proto."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from edge_worker import oip_grpc
from edge_worker.app import create_app
from edge_worker.settings import EdgeSettings
from models.errors import NexusError
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerThread
from tests.support.edge import edge_settings, newest
from tests.support.env import need

PROTO = Path(oip_grpc.__file__).parent / "proto"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, grpc.Channel]]:
    app = create_app(edge_settings(tmp_path_factory.mktemp("edge"), grpc_port=0, max_texts=4))
    with ServerThread(app) as server, grpc.insecure_channel(f"127.0.0.1:{app.state.edge.grpc_port}") as channel:
        yield server.url, channel


def call(channel: grpc.Channel, method: str, request: Any) -> Any:
    response = oip_grpc.message(method + "Response")
    stub = channel.unary_unary(
        f"/{oip_grpc.SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,
    )
    return stub(request, timeout=10)


def test_health_and_metadata(edge: tuple[str, grpc.Channel]) -> None:
    _, channel = edge
    assert call(channel, "ServerLive", oip_grpc.message("ServerLiveRequest")()).live
    assert call(channel, "ServerReady", oip_grpc.message("ServerReadyRequest")()).ready
    assert call(channel, "ModelReady", oip_grpc.message("ModelReadyRequest")(name="funnel")).ready
    meta = call(channel, "ModelMetadata", oip_grpc.message("ModelMetadataRequest")(name="funnel"))
    assert {t.name: t.datatype for t in meta.inputs}["Weekend"] == "BOOL"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probability", "FP32", [-1])]


def _contents(tensor: Any, datatype: str, values: list[Any]) -> None:
    field = getattr(tensor.contents, oip_grpc.CONTENTS[datatype])
    field.extend(v.encode() if isinstance(v, str) else v for v in values)


def test_typed_contents_of_each_kind_are_answered_in_typed_contents(edge: tuple[str, grpc.Channel]) -> None:
    url, channel = edge
    sessions = [SESSION, {**SESSION, "Weekend": True, "Month": "May"}]
    kinds = {"Administrative": "INT64", "Informational": "INT32", "SpecialDay": "FP32", "OperatingSystems": "INT64"}
    request = oip_grpc.ModelInferRequest(model_name="funnel", id="t-1")
    meta = call(channel, "ModelMetadata", oip_grpc.message("ModelMetadataRequest")(name="funnel"))
    for spec in meta.inputs:
        datatype = kinds.get(spec.name, spec.datatype)
        tensor = request.inputs.add(name=spec.name, datatype=datatype, shape=[2])
        values = [s[spec.name] for s in sessions]
        _contents(tensor, datatype, [str(v) for v in values] if datatype == "BYTES" else values)
    response = call(channel, "ModelInfer", request)
    assert response.id == "t-1" and not response.raw_output_contents
    v1 = httpx.post(f"{url}/v1/funnel/score", json={"sessions": sessions}).json()["probabilities"]
    np.testing.assert_allclose(response.outputs[0].contents.fp32_contents, v1, atol=1e-6)


def _texts(count: int, **request_fields: Any) -> Any:
    request = oip_grpc.ModelInferRequest(model_name="emotion", **request_fields)
    added = request.inputs.add(name="text", datatype="BYTES", shape=[count])
    added.contents.bytes_contents.extend([b"hello"] * count)
    return request


def refusal(channel: grpc.Channel, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call(channel, "ModelInfer", request)
    return refused.value.code(), refused.value.details()


def test_refusals_are_status_codes_with_the_https_message(edge: tuple[str, grpc.Channel]) -> None:
    _, channel = edge
    assert refusal(channel, _texts(5)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'text' must hold 1 to 4 elements, got 5",
    )
    raw = _texts(1)
    raw.raw_input_contents.append(b"\x05\x00\x00\x00hello")
    assert refusal(channel, raw)[1] == "input 'text' has contents, but the request uses raw_input_contents"
    raw.ClearField("inputs")
    raw.inputs.add(name="text", datatype="BYTES", shape=[1])
    raw.raw_input_contents.append(b"")
    assert refusal(channel, raw)[1] == "raw_input_contents has 2 entries for 1 inputs"
    half = oip_grpc.ModelInferRequest(model_name="funnel")
    half.inputs.add(name="SpecialDay", datatype="FP16", shape=[1])
    assert "FP16 data must come as raw_input_contents" in refusal(channel, half)[1]
    classify = _texts(1)
    classify.outputs.add(name="scores").parameters["classification"].int64_param = 2
    assert "classification extension is not supported" in refusal(channel, classify)[1]
    assert refusal(channel, _texts(1, model_version="999")) == (
        grpc.StatusCode.NOT_FOUND,
        f"model 'emotion' serves version {newest('emotion')}, not '999'",
    )
    bad_session = oip_grpc.ModelInferRequest(model_name="funnel")
    bad_session.inputs.add(name="session", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b'{"Month": 1}')
    code, details = refusal(channel, bad_session)  # refused by the featurizer, inside the batch
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "missing" in details


def test_port_zero_needs_one_worker() -> None:
    with pytest.raises(NexusError, match="grpc_port 0"):
        EdgeSettings.from_env({}, grpc_port=0, workers=2)
    assert EdgeSettings.from_env({"NEXUS_GRPC_PORT": "8001"}).grpc_port == 8001
    assert EdgeSettings.from_env({}).grpc_port is None  # off unless asked for


def test_the_committed_descriptor_is_the_compiled_proto(tmp_path: Path) -> None:
    need(importlib.util.find_spec("grpc_tools") is not None, "grpcio-tools is not installed (pip install '.[dev]')")
    out = tmp_path / "compiled.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(PROTO),
            f"--descriptor_set_out={out}",
            "grpc_predict_v2.proto",
        ],
        check=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString((PROTO / "grpc_predict_v2.pb").read_bytes())
    assert compiled == committed, "regenerate edge_worker/proto/grpc_predict_v2.pb (the command is in the .proto)"
