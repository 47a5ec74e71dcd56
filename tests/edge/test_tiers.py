"""Two families on one /v1 route (the emotion tiers): ``?model=`` picks, a setting names the default,
the store route is registered once, and OpenAPI, /v2/models and OIP v2 (HTTP and gRPC) serve both.

The second family here is a test-only one, ``emotion-mirror``: the emotion family's record under
another name (so the very same Serving and path), served from a copy of the shipped emotion bundle
renamed to it, with thresholds of 0 (every label positive) so its answers tell which model spoke.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from edge_worker import oip_grpc
from edge_worker.app import create_app
from edge_worker.settings import EdgeSettings
from models.bundle import SIGNATURE, read_manifest, write_manifest
from models.emotion.family import EMOTION
from models.errors import NexusError
from models.families import FAMILIES, Families, load_predictor
from models.funnel.family import FUNNEL
from nexus_tools.examples import SESSION
from tests.support.edge import BUNDLES, TEXTS, newest

MIRROR = dataclasses.replace(EMOTION, name="emotion-mirror")
MIRROR_VERSION = "7"


@pytest.fixture(scope="module")
def families() -> Families:
    return FAMILIES.with_family(MIRROR)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped emotion and funnel bundles, and the emotion bundle again as emotion-mirror version 7
    (unsigned: no public key is configured), whose manifest names ONNX int8 as its default backend."""
    root = tmp_path_factory.mktemp("tiers")
    for model in ("emotion", "funnel"):
        shutil.copytree(BUNDLES / model / newest(model), root / model / newest(model))
    mirror = root / MIRROR.name / MIRROR_VERSION
    shutil.copytree(BUNDLES / "emotion" / newest("emotion"), mirror)
    manifest = read_manifest(mirror)
    manifest.update(
        name=MIRROR.name,
        family=MIRROR.name,
        version=MIRROR_VERSION,
        thresholds=dict.fromkeys(manifest["labels"], 0.0),
        default_backend="onnx-int8",
    )
    (mirror / SIGNATURE).unlink(missing_ok=True)
    write_manifest(mirror, manifest)
    return root


def _settings(tmp_path: Path, repository: Path, families: Families, **values: Any) -> EdgeSettings:
    return EdgeSettings.model_validate(
        {"models_dir": repository, "data_dir": tmp_path / "data", **values}, context={"families": families}
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, repository: Path, families: Families) -> Iterator[TestClient]:
    settings = _settings(
        tmp_path_factory.mktemp("edge"), repository, families, models="emotion,emotion-mirror,funnel", grpc_port=0
    )
    with TestClient(create_app(settings, families)) as test_client:
        yield test_client


def test_model_picks_the_tier_and_the_first_listed_answers_without_it(client: TestClient) -> None:
    labels = read_manifest(BUNDLES / "emotion" / newest("emotion"))["labels"]
    plain = client.post("/v1/emotion", json={"texts": TEXTS})
    assert plain.status_code == 200, plain.text
    assert plain.json()["model"] == "emotion" and plain.json()["model_version"] == newest("emotion")
    assert client.post("/v1/emotion?model=emotion", json={"texts": TEXTS}).json() == plain.json()

    mirror = client.post("/v1/emotion?model=emotion-mirror", json={"texts": TEXTS})
    assert mirror.status_code == 200, mirror.text
    body = mirror.json()
    assert body["model"] == "emotion-mirror" and body["model_version"] == MIRROR_VERSION
    # the same network (int8 here), its own thresholds: every label is over 0
    assert all(result["labels"] == labels for result in body["results"])
    for ours, theirs in zip(body["results"], plain.json()["results"]):
        np.testing.assert_allclose(list(ours["scores"].values()), list(theirs["scores"].values()), atol=0.05)
    # the other routes take ?model= alike
    assert client.post("/v1/funnel/score?model=funnel", json={"session": SESSION}).json()["model"] == "funnel"


@pytest.mark.parametrize("query", ["model=funnel", "model=churn", "model=", "tier=fast", "model=emotion&x=1"])
def test_a_model_the_route_does_not_serve_is_a_422_naming_the_served_ones(client: TestClient, query: str) -> None:
    refused = client.post(f"/v1/emotion?{query}", json={"text": "hello"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"].endswith("; /v1/emotion serves emotion (default), emotion-mirror")


def test_the_store_route_is_registered_once_and_stores_for_every_tier(client: TestClient) -> None:
    app: Any = client.app
    paths = [route.path for route in app.routes]
    assert paths.count("/v1/emotion") == 1 and paths.count("/v1/feedback") == 1
    stored = client.post("/v1/feedback", json={"text": "so glad", "labels": ["joy"]})
    assert stored.status_code == 201, stored.text
    assert client.post("/v1/feedback", json={"text": "so glad", "labels": ["glee"]}).status_code == 422


def test_openapi_documents_the_query_parameter_and_the_answering_models(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/emotion"]["post"]
    (parameter,) = operation["parameters"]
    assert parameter["name"] == "model" and parameter["in"] == "query" and not parameter["required"]
    assert {"enum": ["emotion", "emotion-mirror"], "type": "string"} in parameter["schema"]["anyOf"]
    assert "emotion (default), emotion-mirror" in parameter["schema"]["description"]
    assert "422" in operation["responses"]
    answer = document["components"]["schemas"]["EmotionResponse"]["properties"]["model"]
    assert answer["enum"] == ["emotion", "emotion-mirror"]
    assert list(document["paths"]).count("/v1/feedback") == 1


def test_v2_lists_and_serves_both_by_name_over_http_and_grpc(client: TestClient) -> None:
    index = client.get("/v2/models").json()["models"]
    assert [(m["name"], m["route"], m["route_default"], m["ready"], m["tier"]) for m in index] == [
        ("emotion", "/v1/emotion", True, True, "fast"),
        ("emotion-mirror", "/v1/emotion", False, True, "fast"),
        ("funnel", "/v1/funnel/score", True, True, "fast"),
    ]
    assert index[1]["version"] == MIRROR_VERSION
    app: Any = client.app
    state = app.state.edge
    # no emotion-mirror backend setting: the bundle's default_backend
    assert state.repository.get("emotion-mirror").predictor.backend == "onnx-int8"
    assert state.repository.get("emotion").predictor.backend == "onnx"
    meta = client.get("/v2/models/emotion-mirror").json()
    assert meta["name"] == "emotion-mirror" and meta["versions"] == [MIRROR_VERSION]

    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}]}
    http = client.post("/v2/models/emotion-mirror/infer", json=infer).json()
    expected = load_predictor(
        state.settings.models_dir / "emotion-mirror" / MIRROR_VERSION,
        "onnx-int8",
        families=FAMILIES.with_family(MIRROR),
    ).predict(TEXTS[:1])
    assert http["model_name"] == "emotion-mirror"
    np.testing.assert_allclose(np.reshape(http["outputs"][0]["data"], expected.shape), expected, atol=1e-5)

    request = oip_grpc.ModelInferRequest(model_name="emotion-mirror")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(TEXTS[0].encode())
    response_type = oip_grpc.message("ModelInferResponse")
    # the gRPC server runs on the app's loop, which the test client keeps running
    with grpc.insecure_channel(f"127.0.0.1:{state.grpc_port}") as channel:
        stub = channel.unary_unary(
            f"/{oip_grpc.SERVICE}/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        answer = stub(request, timeout=10)
    assert answer.model_name == "emotion-mirror" and answer.model_version == MIRROR_VERSION
    np.testing.assert_allclose(answer.outputs[0].contents.fp32_contents, expected.ravel(), atol=1e-5)


def test_default_models_names_the_default_of_a_shared_route(
    tmp_path: Path, repository: Path, families: Families
) -> None:
    settings = _settings(
        tmp_path, repository, families, models="emotion,emotion-mirror", default_models="emotion-mirror"
    )
    with TestClient(create_app(settings, families)) as client:
        assert client.post("/v1/emotion", json={"text": "hello"}).json()["model"] == "emotion-mirror"
        assert client.post("/v1/emotion?model=emotion", json={"text": "hello"}).json()["model"] == "emotion"
        index = {m["name"]: m["route_default"] for m in client.get("/v2/models").json()["models"]}
        assert index == {"emotion": False, "emotion-mirror": True}


def test_default_models_must_be_served_and_one_per_route(tmp_path: Path, families: Families) -> None:
    with pytest.raises(ValidationError, match=r"'emotion-mirror' is not one of the served models \(emotion\)"):
        _settings(tmp_path, BUNDLES, families, models="emotion", default_models="emotion-mirror")
    with pytest.raises(ValidationError, match="emotion and emotion-mirror both claim /v1/emotion"):
        _settings(tmp_path, BUNDLES, families, models="emotion,emotion-mirror", default_models="emotion,emotion-mirror")
    # from the environment, as uvicorn's workers build them
    env = EdgeSettings.from_env({"NEXUS_DEFAULT_MODELS": "funnel", "NEXUS_MODELS": "emotion,funnel"})
    assert env.default_models == ("funnel",) and EdgeSettings.from_env(env.to_env()) == env


def test_families_on_one_path_must_agree_on_its_request_and_answer(tmp_path: Path) -> None:
    squatter = dataclasses.replace(
        FUNNEL, name="squatter", serving=dataclasses.replace(FUNNEL.serving, path="/v1/emotion")
    )
    families = FAMILIES.with_family(squatter)
    settings = _settings(tmp_path, BUNDLES, families, models="emotion,squatter")
    with pytest.raises(NexusError, match="emotion and squatter share /v1/emotion but not its request"):
        create_app(settings, families)


def test_the_shipped_edge_serves_the_fast_tier_and_the_funnel_by_default() -> None:
    assert EdgeSettings.from_env({}).models == ("emotion", "funnel")


def test_the_shipped_accurate_bundle_answers_beside_the_fast_tier(tmp_path: Path) -> None:
    version = newest("emotion-accurate")
    bundle = BUNDLES / "emotion-accurate" / version
    settings = EdgeSettings.from_env({}, data_dir=tmp_path / "data", models="emotion,emotion-accurate,funnel")
    expected = load_predictor(bundle, read_manifest(bundle)["default_backend"]).predict(TEXTS)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/emotion", json={"texts": TEXTS}).json()["model"] == "emotion"
        answer = client.post("/v1/emotion?model=emotion-accurate", json={"texts": TEXTS})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "emotion-accurate" and body["model_version"] == version
        labels = read_manifest(bundle)["labels"]
        got = [[result["scores"][label] for label in labels] for result in body["results"]]
        np.testing.assert_allclose(got, expected, atol=1e-4)
        tiers = {m["name"]: (m["tier"], m["route"]) for m in client.get("/v2/models").json()["models"]}
        assert tiers["emotion"] == ("fast", "/v1/emotion") and tiers["emotion-accurate"] == ("accurate", "/v1/emotion")
        infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}]}
        v2 = client.post("/v2/models/emotion-accurate/infer", json=infer).json()
        np.testing.assert_allclose(np.reshape(v2["outputs"][0]["data"], (1, -1)), expected[:1], atol=1e-4)
