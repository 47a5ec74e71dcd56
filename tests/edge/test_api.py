"""The edge node's HTTP API on the shipped bundles: /v1, Open Inference Protocol v2, metrics, store."""

from __future__ import annotations

import json
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
    assert client.get("/v2").json()["name"] == "nexus-edge"
    for model, output_shape in (("emotion", [-1, 7]), ("funnel", [-1])):
        assert client.get(f"/v2/models/{model}/ready").json() == {"name": model, "ready": True}
        meta = client.get(f"/v2/models/{model}").json()
        assert meta["name"] == model and newest(model) in meta["versions"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"][0]["datatype"] == "BYTES"
        assert meta["outputs"][0]["shape"] == output_shape


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


def test_metrics_report_routes_models_batches_and_versions(client: TestClient) -> None:
    client.post("/v1/emotion", json={"text": "hello"})
    client.post("/v1/funnel/score", json={"session": SESSION})
    client.get("/no/such/route")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'nexus_edge_requests_total{route="/v1/emotion",method="POST",status="200"}' in text
    assert 'nexus_edge_requests_total{route="unmatched",method="GET",status="404"}' in text
    assert 'nexus_edge_request_duration_seconds_count{route="/v1/funnel/score"}' in text
    assert 'nexus_edge_batch_size_bucket{model="emotion",le="+Inf"}' in text
    assert 'nexus_edge_inference_duration_seconds_count{model="funnel"}' in text
    assert 'nexus_edge_queue_depth{model="emotion"} 0' in text
    assert f'nexus_edge_model_loaded_info{{model="emotion",version="{newest("emotion")}",backend="onnx"}} 1' in text
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
        assert 'nexus_edge_store_rows_erased_total{reason="erasure"} 2' in client.get("/metrics").text
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
