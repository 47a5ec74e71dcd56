"""The edge node's HTTP API on the shipped bundles: /v1, Open Inference Protocol v2, metrics, store."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from edge_worker.app import create_app
from edge_worker.settings import EdgeSettings
from edge_worker.store import LocalStore
from models.bundle import read_manifest
from models.errors import NexusError
from models.families import load_predictor
from nexus_tools.examples import SESSION
from tests.support.edge import BUNDLES, TEXTS, edge_settings, newest, operator
from tests.support.metrics import sample


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(edge_settings(tmp_path_factory.mktemp("edge")))
    with TestClient(app) as test_client:
        yield test_client


def test_emotion_answers_scores_labels_over_threshold_and_top(client: TestClient) -> None:
    manifest = read_manifest(BUNDLES / "emotion" / newest("emotion"))
    labels, thresholds = manifest["labels"], manifest["thresholds"]
    reference = load_predictor(BUNDLES / "emotion" / newest("emotion")).predict(TEXTS)

    many = client.post("/v1/emotion", json={"texts": TEXTS})
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["model"] == "emotion" and body["model_version"] == newest("emotion")
    assert len(body["results"]) == len(TEXTS)
    for result, expected in zip(body["results"], reference):
        assert list(result["scores"]) == labels
        np.testing.assert_allclose([result["scores"][label] for label in labels], expected, atol=1e-5)
        assert result["labels"] == [label for label, s in zip(labels, expected) if s >= thresholds[label]]
        assert result["top"] == labels[int(np.argmax(expected))]

    one = client.post("/v1/emotion", json={"text": TEXTS[1]}).json()
    assert one["results"] == [body["results"][1]]


def test_funnel_scores_one_session_or_a_list(client: TestClient) -> None:
    expected = load_predictor(BUNDLES / "funnel" / newest("funnel")).predict([SESSION, {**SESSION, "PageValues": 0.0}])
    one = client.post("/v1/funnel/score", json={"session": SESSION})
    assert one.status_code == 200, one.text
    assert one.json()["model_version"] == newest("funnel")
    many = client.post("/v1/funnel/score", json={"sessions": [SESSION, {**SESSION, "PageValues": 0.0}]}).json()
    np.testing.assert_allclose(many["probabilities"], expected, atol=1e-6)
    assert one.json()["probabilities"] == many["probabilities"][:1]


def test_v2_health_server_and_model_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert client.get("/v2").json() == {"name": "nexus-edge", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    for model, output_shape in (("emotion", [-1, 7]), ("funnel", [-1])):
        assert client.get(f"/v2/models/{model}/ready").json() == {"name": model, "ready": True}
        version = newest(model)
        assert client.get(f"/v2/models/{model}/versions/{version}/ready").json()["ready"] is True
        other = client.get(f"/v2/models/{model}/versions/999/ready")  # another version than the loaded one
        assert other.status_code == 404 and "serves version" in other.json()["error"]
        meta = client.get(f"/v2/models/{model}").json()
        assert meta == client.get(f"/v2/models/{model}/versions/{version}").json()
        assert meta["name"] == model and version in meta["versions"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["outputs"][0]["shape"] == output_shape
    assert client.get("/v2/models/emotion").json()["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    # the funnel advertises one tensor per field its featurizer reads, each with its own datatype
    inputs = {t["name"]: t["datatype"] for t in client.get("/v2/models/funnel").json()["inputs"]}
    assert inputs["ProductRelated_Duration"] == "FP64" and inputs["Month"] == "BYTES" and inputs["Weekend"] == "BOOL"
    assert set(inputs) < set(SESSION) and "Region" not in inputs  # Region: the federated partition key
    missing = client.get("/v2/models/emotion/versions/999")
    assert missing.status_code == 404 and "serves version" in missing.json()["error"]


def test_v2_infer_returns_the_same_scores_as_v1(client: TestClient) -> None:
    request = {
        "id": "r-1",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS), 1], "data": [[t] for t in TEXTS]}],
    }
    answer = client.post("/v2/models/emotion/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "r-1" and body["model_name"] == "emotion" and body["model_version"] == newest("emotion")
    output = body["outputs"][0]
    assert output["name"] == "scores" and output["datatype"] == "FP32" and output["shape"] == [len(TEXTS), 7]
    v1 = client.post("/v1/emotion", json={"texts": TEXTS}).json()["results"]
    np.testing.assert_allclose(
        np.reshape(output["data"], (len(TEXTS), 7)), [list(r["scores"].values()) for r in v1], atol=1e-5
    )

    sessions = {
        "inputs": [{"name": "session", "datatype": "BYTES", "shape": [2], "data": [json.dumps(SESSION), SESSION]}]
    }
    funnel = client.post("/v2/models/funnel/infer", json=sessions).json()["outputs"][0]
    assert funnel["name"] == "probability" and funnel["shape"] == [2]
    score = client.post("/v1/funnel/score", json={"session": SESSION}).json()["probabilities"][0]
    np.testing.assert_allclose(funnel["data"], [score, score], atol=1e-6)


def test_v2_infer_binary_tensor_data_both_ways(client: TestClient) -> None:
    """The extension by hand: a JSON header of Inference-Header-Content-Length bytes, then raw tensors."""
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS)
    header = json.dumps(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
        }
    ).encode()
    answer = client.post(
        "/v2/models/emotion/infer", content=header + raw, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["inference-header-content-length"])
    body = json.loads(answer.content[:size])
    assert body["outputs"][0]["parameters"] == {"binary_data_size": 3 * 7 * 4} and "data" not in body["outputs"][0]
    scores = np.frombuffer(answer.content[size:], dtype="<f4").reshape(3, 7)
    v1 = client.post("/v1/emotion", json={"texts": TEXTS}).json()["results"]
    np.testing.assert_allclose(scores, [list(r["scores"].values()) for r in v1], atol=1e-5)


def test_v2_funnel_takes_one_tensor_per_field(client: TestClient) -> None:
    meta = client.get("/v2/models/funnel").json()["inputs"]
    sessions = [SESSION, {**SESSION, "PageValues": 0.0, "Weekend": True}]
    inputs = [
        {"name": t["name"], "datatype": t["datatype"], "shape": [2], "data": [s[t["name"]] for s in sessions]}
        for t in meta
    ]
    for tensor in inputs:  # categories as text, like a dataframe's string columns
        if tensor["datatype"] == "BYTES":
            tensor["data"] = [str(v) for v in tensor["data"]]
    answer = client.post("/v2/models/funnel/infer", json={"inputs": inputs})
    assert answer.status_code == 200, answer.text
    v1 = client.post("/v1/funnel/score", json={"sessions": sessions}).json()["probabilities"]
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], v1, atol=1e-6)


def test_metrics_report_routes_models_batches_and_versions(client: TestClient) -> None:
    client.post("/v1/emotion", json={"text": "hello"})
    client.post("/v1/funnel/score", json={"session": SESSION})
    client.get("/no/such/route")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert sample(text, "nexus_edge_requests_total", route="/v1/emotion", method="POST", status="200")
    assert sample(text, "nexus_edge_requests_total", route="unmatched", method="GET", status="404")
    assert sample(text, "nexus_edge_request_duration_seconds_count", route="/v1/funnel/score")
    assert sample(text, "nexus_edge_batch_size_bucket", model="emotion", le="+Inf")
    assert sample(text, "nexus_edge_inference_duration_seconds_count", model="funnel")
    assert sample(text, "nexus_edge_queue_depth", model="emotion") == 0
    loaded = {"model": "emotion", "version": newest("emotion"), "backend": "onnx"}
    assert sample(text, "nexus_edge_model_loaded_info", **loaded) == 1
    assert "# TYPE nexus_edge_model_load_failures_total counter" in text


def test_openapi_documents_every_route(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served = {(route.path, method) for route in client.app.routes for method in route.methods if method != "HEAD"}
    assert documented == served
    emotion = doc["components"]["schemas"]["EmotionRequest"]["properties"]["texts"]
    assert json.dumps(emotion).count('"maxItems": 64') == 1  # the settings' limit is published


def test_feedback_and_outcomes_stay_in_the_local_store_until_erased(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        stored = client.post("/v1/feedback", json={"text": "love it", "labels": ["joy"], "visitor_id": "v-1"})
        assert stored.status_code == 201 and stored.json()["stored"] is True
        client.post("/v1/feedback", json={"text": "meh", "labels": ["neutral", "sadness"]})
        outcome = client.post("/v1/funnel/outcome", json={"session": SESSION, "converted": True, "visitor_id": "v-1"})
        assert outcome.status_code == 201, outcome.text

        store = LocalStore(settings.data_dir)
        labels = read_manifest(BUNDLES / "emotion" / newest("emotion"))["labels"]
        texts, matrix = store.emotion_examples(labels)
        assert texts == ["love it", "meh"]
        assert matrix[0, labels.index("joy")] == 1 and matrix[0].sum() == 1 and matrix[1].sum() == 2
        sessions, converted = store.funnel_examples()
        assert sessions == [SESSION] and converted.tolist() == [1.0]

        erased = client.delete("/v1/privacy/visitors/v-1", headers=operator(client))
        assert erased.json() == {"visitor_id": "v-1", "erased": 2}
        assert store.counts() == {"feedback": 1, "funnel_outcome": 0}
        assert client.delete("/v1/privacy/visitors/v-1", headers=operator(client)).json()["erased"] == 0
        assert sample(client.get("/metrics").text, "nexus_edge_store_rows_erased_total", reason="erasure") == 2
        store.close()


def test_settings_come_from_environment_then_arguments(tmp_path: Path) -> None:
    env = {
        "NEXUS_MAX_TEXTS": "2",
        "NEXUS_EMOTION_BACKEND": "tflite",
        "NEXUS_BATCHING": "false",
        "NEXUS_MODELS": "funnel, emotion",
    }
    settings = EdgeSettings.from_env(env, max_texts=3, data_dir=tmp_path)
    assert (settings.max_texts, settings.emotion_backend, settings.batching, settings.models) == (
        3,
        "tflite",
        False,
        ("funnel", "emotion"),
    )
    assert EdgeSettings.from_env(settings.to_env()) == settings
    with pytest.raises(NexusError, match="max_batch"):
        EdgeSettings.from_env({"NEXUS_MAX_BATCH": "lots"})
    with pytest.raises(NexusError, match="models"):
        EdgeSettings.from_env({"NEXUS_MODELS": "churn"})


@pytest.mark.parametrize("backend", ["tflite", "onnx-int8"])
def test_other_backends_serve_within_the_bundles_tolerance(tmp_path: Path, backend: str) -> None:
    settings = edge_settings(tmp_path, emotion_backend=backend, funnel_backend=backend)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/models/emotion").json()["platform"] == (
            "tflite" if backend == "tflite" else "onnxruntime_onnx"
        )
        for model, request, _output in (
            ("emotion", {"texts": TEXTS}, "scores"),
            ("funnel", {"sessions": [SESSION]}, "probability"),
        ):
            manifest = read_manifest(BUNDLES / model / newest(model))
            reference = load_predictor(BUNDLES / model / newest(model)).predict(
                request.get("texts") or request["sessions"]
            )
            path = "/v1/emotion" if model == "emotion" else "/v1/funnel/score"
            body = client.post(path, json=request).json()
            got = [list(r["scores"].values()) for r in body["results"]] if model == "emotion" else body["probabilities"]
            tolerance = manifest["tolerance"]["max_abs_diff"][backend]
            np.testing.assert_allclose(got, reference, atol=tolerance + 1e-5)
