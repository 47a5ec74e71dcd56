"""Triton's own clients against a real ``nexus edge serve`` (two workers), unchanged: OIP v2 over
HTTP (JSON and the binary tensor data extension, sync and asyncio) and over gRPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as service_pb2
import tritonclient.grpc.service_pb2_grpc as service_pb2_grpc
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from edge_worker import oip_grpc
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerProcess, edge_argv, free_port
from tests.support.edge import TEXTS, newest

Client = Any  # tritonclient.http or tritonclient.grpc: the same calls, each its own InferInput


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``host:port`` of the edge's HTTP and gRPC; both workers share the gRPC port (SO_REUSEPORT)."""
    port, grpc_port = free_port(), free_port()
    argv = edge_argv(port, data_dir=tmp_path_factory.mktemp("edge") / "data", workers=2)
    with ServerProcess("edge", [*argv, "--grpc-port", str(grpc_port)], port):
        yield f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def v1(edge: tuple[str, str]) -> dict[str, Any]:
    """The /v1 answers the v2 ones must equal: emotion scores of TEXTS, funnel P(purchase) of SESSION."""
    with httpx.Client(base_url=f"http://{edge[0]}") as http:
        emotion = http.post("/v1/emotion", json={"texts": TEXTS}).json()["results"]
        funnel = http.post("/v1/funnel/score", json={"session": SESSION}).json()["probabilities"][0]
    return {"scores": np.array([list(r["scores"].values()) for r in emotion]), "probability": funnel}


def _texts(client: Any, binary: bool = True) -> Any:
    tensor = client.InferInput("text", [len(TEXTS), 1], "BYTES")
    data = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    if client is grpcclient:
        return tensor.set_data_from_numpy(data)
    return tensor.set_data_from_numpy(data, binary_data=binary)


#: one session as the funnel's field tensors, in several datatypes it accepts (a dataframe's columns)
COLUMNS: dict[str, np.ndarray] = {
    "Administrative": np.array([SESSION["Administrative"]], dtype=np.int64),
    "Administrative_Duration": np.array([SESSION["Administrative_Duration"]], dtype=np.float64),
    "Informational": np.array([SESSION["Informational"]], dtype=np.int32),
    "Informational_Duration": np.array([SESSION["Informational_Duration"]], dtype=np.float64),
    "ProductRelated": np.array([SESSION["ProductRelated"]], dtype=np.int64),
    "ProductRelated_Duration": np.array([SESSION["ProductRelated_Duration"]], dtype=np.float64),
    "BounceRates": np.array([SESSION["BounceRates"]], dtype=np.float64),
    "ExitRates": np.array([SESSION["ExitRates"]], dtype=np.float64),
    "PageValues": np.array([SESSION["PageValues"]], dtype=np.float64),
    "SpecialDay": np.array([SESSION["SpecialDay"]], dtype=np.float32),
    "Month": np.array([SESSION["Month"].encode()], dtype=np.object_),
    "OperatingSystems": np.array([SESSION["OperatingSystems"]], dtype=np.int64),
    "Browser": np.array([str(SESSION["Browser"]).encode()], dtype=np.object_),
    "TrafficType": np.array([SESSION["TrafficType"]], dtype=np.int64),
    "VisitorType": np.array([SESSION["VisitorType"].encode()], dtype=np.object_),
    "Weekend": np.array([SESSION["Weekend"]], dtype=np.bool_),
}
DATATYPES = {
    "int64": "INT64",
    "int32": "INT32",
    "float64": "FP64",
    "float32": "FP32",
    "object": "BYTES",
    "bool": "BOOL",
}


def _columns(client: Any, binary: bool = True) -> list[Any]:
    inputs = []
    for name, values in COLUMNS.items():
        tensor = client.InferInput(name, list(values.shape), DATATYPES[values.dtype.name])
        if client is grpcclient:
            inputs.append(tensor.set_data_from_numpy(values))
        else:
            inputs.append(tensor.set_data_from_numpy(values, binary_data=binary))
    return inputs


# --- tritonclient.http ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(edge: tuple[str, str]) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(edge[0])
    yield client
    client.close()


def test_http_health_and_metadata(http: Any) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    version = newest("emotion")
    assert http.is_model_ready("emotion") and http.is_model_ready("emotion", version)
    assert not http.is_model_ready("emotion", "999")
    meta = http.get_model_metadata("emotion", version)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 7]}]
    funnel = http.get_model_metadata("funnel")
    assert [t["name"] for t in funnel["inputs"]] == list(COLUMNS)


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_http_infer_json_and_binary_tensors(http: Any, v1: dict[str, Any], binary_in: bool, binary_out: bool) -> None:
    outputs = [httpclient.InferRequestedOutput("scores", binary_data=binary_out)]
    result = http.infer("emotion", [_texts(httpclient, binary_in)], outputs=outputs, request_id="r-7")
    response = result.get_response()
    assert response["id"] == "r-7" and response["model_version"] == newest("emotion")
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary_out
    np.testing.assert_allclose(result.as_numpy("scores"), v1["scores"], atol=1e-5)


def test_http_infer_without_outputs_answers_every_output_in_binary(http: Any, v1: dict[str, Any]) -> None:
    result = http.infer("emotion", [_texts(httpclient)])  # tritonclient asks binary_data_output
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == len(TEXTS) * 7 * 4
    np.testing.assert_allclose(result.as_numpy("scores"), v1["scores"], atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_with_one_input_per_funnel_field(http: Any, v1: dict[str, Any], binary: bool) -> None:
    result = http.infer("funnel", _columns(httpclient, binary), model_version=newest("funnel"))
    np.testing.assert_allclose(result.as_numpy("probability"), [v1["probability"]], atol=1e-6)


def test_http_infer_with_sessions_as_json_text(http: Any, v1: dict[str, Any]) -> None:
    tensor = httpclient.InferInput("session", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([json.dumps(SESSION).encode()] * 2, dtype=np.object_))
    result = http.infer("funnel", [tensor])
    np.testing.assert_allclose(result.as_numpy("probability"), [v1["probability"]] * 2, atol=1e-6)


def test_http_bad_requests_raise_the_servers_message(http: Any) -> None:
    wrong = httpclient.InferInput("ids", [1], "INT64").set_data_from_numpy(np.array([3], dtype=np.int64))
    with pytest.raises(InferenceServerException, match="takes one input 'text'") as refused:
        http.infer("emotion", [wrong])
    assert refused.value.status() == "400"
    with pytest.raises(InferenceServerException, match="missing: Weekend") as refused:
        http.infer("funnel", _columns(httpclient)[:-1])
    with pytest.raises(InferenceServerException, match="unknown model 'churn'") as refused:
        http.infer("churn", [_texts(httpclient)])
    assert refused.value.status() == "404"
    with pytest.raises(InferenceServerException, match="serves version"):
        http.infer("emotion", [_texts(httpclient)], model_version="999")
    blank = httpclient.InferInput("text", [1], "BYTES").set_data_from_numpy(np.array([b"  "], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"text\[0\]: empty text") as refused:
        http.infer("emotion", [blank])
    assert refused.value.status() == "422"


def test_http_asyncio_client(edge: tuple[str, str], v1: dict[str, Any]) -> None:
    async def calls() -> list[Any]:
        client = aiohttpclient.InferenceServerClient(edge[0])
        try:
            assert await client.is_server_ready() and await client.is_model_ready("funnel")
            assert (await client.get_model_metadata("emotion"))["name"] == "emotion"
            # concurrent requests: the micro-batcher may join them into one batch
            return await asyncio.gather(*(client.infer("emotion", [_texts(aiohttpclient)]) for _ in range(8)))
        finally:
            await client.close()

    for result in asyncio.run(calls()):
        np.testing.assert_allclose(result.as_numpy("scores"), v1["scores"], atol=1e-5)


# --- tritonclient.grpc ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rpc(edge: tuple[str, str]) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(edge[1])
    yield client
    client.close()


def test_grpc_health_and_metadata(rpc: Any) -> None:
    assert rpc.is_server_live() and rpc.is_server_ready()
    assert list(rpc.get_server_metadata().extensions) == ["binary_tensor_data"]
    assert rpc.is_model_ready("funnel") and rpc.is_model_ready("funnel", newest("funnel"))
    assert not rpc.is_model_ready("funnel", "999")
    meta = rpc.get_model_metadata("emotion", as_json=True)
    assert meta["name"] == "emotion" and meta["platform"] == "onnxruntime_onnx"
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": ["-1", "7"]}]  # int64 as JSON text
    assert [t.name for t in rpc.get_model_metadata("funnel").inputs] == list(COLUMNS)


def test_grpc_infer_raw_contents(rpc: Any, v1: dict[str, Any]) -> None:
    result = rpc.infer("emotion", [_texts(grpcclient)], request_id="g-1")
    assert result.get_response().id == "g-1"
    np.testing.assert_allclose(result.as_numpy("scores"), v1["scores"], atol=1e-5)
    funnel = rpc.infer("funnel", _columns(grpcclient), outputs=[grpcclient.InferRequestedOutput("probability")])
    np.testing.assert_allclose(funnel.as_numpy("probability"), [v1["probability"]], atol=1e-6)


def test_grpc_infer_typed_contents(edge: tuple[str, str], v1: dict[str, Any]) -> None:
    """Triton's stubs, without tritonclient's raw packing: typed contents in, typed contents out."""
    request = service_pb2.ModelInferRequest(model_name="emotion", id="typed")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
    tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    with grpc.insecure_channel(edge[1]) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert response.id == "typed" and not response.raw_output_contents
    assert list(response.outputs[0].shape) == [len(TEXTS), 7]
    scores = np.reshape(response.outputs[0].contents.fp32_contents, (len(TEXTS), 7))
    np.testing.assert_allclose(scores, v1["scores"], atol=1e-5)


def test_grpc_bad_requests_get_a_status_and_the_message(rpc: Any) -> None:
    wrong = grpcclient.InferInput("text", [1], "FP32").set_data_from_numpy(np.array([1.0], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="must have datatype BYTES, got FP32") as refused:
        rpc.infer("emotion", [wrong])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown model 'churn'") as refused:
        rpc.get_model_metadata("churn")
    assert refused.value.status() == "StatusCode.NOT_FOUND"
    many = grpcclient.InferInput("text", [65], "BYTES").set_data_from_numpy(np.array([b"hi"] * 65, dtype=np.object_))
    with pytest.raises(InferenceServerException, match="1 to 64 elements"):
        rpc.infer("emotion", [many])


def test_the_edges_stubs_and_tritonclients_share_a_process(edge: tuple[str, str]) -> None:
    """Both define ``inference.*`` messages; the edge's live in a descriptor pool of their own."""
    request = oip_grpc.ModelInferRequest(model_name="emotion")
    assert service_pb2.ModelInferRequest.FromString(request.SerializeToString()).model_name == "emotion"
    assert Path(oip_grpc.DESCRIPTOR).is_file()
