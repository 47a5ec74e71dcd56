"""Model repository: newest or pinned version, hot swap without failed requests, bad bundles refused."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from edge_worker.app import create_app
from models.errors import NexusError
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerThread
from tests.support.edge import add_version, copy_repository, edge_settings, newest
from tests.support.metrics import sample


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return copy_repository(tmp_path / "models")


def _tamper(bundle: Path) -> None:
    artifact = bundle / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))


def test_hot_swap_under_load_fails_no_request_and_a_bad_bundle_keeps_the_old_one(
    tmp_path: Path, repository: Path
) -> None:
    v1 = newest("emotion", repository)
    v2, v3 = str(int(v1) + 1), str(int(v1) + 2)
    app = create_app(edge_settings(tmp_path, repository, max_delay_ms=1.0))
    state = app.state.edge
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    async def hammer(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:

            async def loop() -> None:
                while not stop.is_set():
                    response = await http.post("/v1/emotion", json={"texts": ["great", "awful"]})
                    seen.append((response.status_code, response.json().get("model_version", response.text)))

            await asyncio.gather(*(loop() for _ in range(8)))

    with ServerThread(app) as server:
        load = threading.Thread(target=asyncio.run, args=(hammer(server.url),))
        load.start()
        time.sleep(0.5)
        add_version(repository, "emotion", v2)
        assert state.repository.reload() == {"emotion": v2, "funnel": newest("funnel", repository)}
        time.sleep(0.5)
        _tamper(add_version(repository, "emotion", v3))
        assert state.repository.reload("emotion") == {"emotion": v2}
        time.sleep(0.3)
        stop.set()
        load.join(timeout=20)
        metrics = httpx.get(f"{server.url}/metrics").text
        ready = httpx.get(f"{server.url}/v2/health/ready")

    assert seen and all(status == 200 for status, _ in seen), {s for s in seen if s[0] != 200}
    versions = [version for _, version in seen]
    assert versions[0] == v1 and versions[-1] == v2 and set(versions) == {v1, v2}
    assert sample(metrics, "nexus_edge_model_load_failures_total", model="emotion", version=v3) == 1
    assert sample(metrics, "nexus_edge_model_loaded_info", model="emotion", version=v2, backend="onnx") == 1
    assert sample(metrics, "nexus_edge_model_loaded_info", model="emotion", version=v1, backend="onnx") is None
    assert "sha256 mismatch" in state.repository.failures()[f"emotion/{v3}"]
    assert ready.status_code == 200


def test_a_pinned_version_is_served_and_activate_switches_exactly(tmp_path: Path, repository: Path) -> None:
    v1 = newest("emotion", repository)
    v2 = str(int(v1) + 1)
    add_version(repository, "emotion", v2)
    with TestClient(create_app(edge_settings(tmp_path, repository, emotion_version=v1))) as client:
        assert client.post("/v1/emotion", json={"text": "hi"}).json()["model_version"] == v1
        repo = client.app.state.edge.repository
        repo.reload()
        assert repo.get("emotion").version == v1  # the pin holds
        repo.activate("emotion", v2)
        assert client.post("/v1/emotion", json={"text": "hi"}).json()["model_version"] == v2
        repo.activate("emotion", v1)  # an assignment may roll back
        assert client.post("/v1/emotion", json={"text": "hi"}).json()["model_version"] == v1
        with pytest.raises(NexusError, match="missing|no manifest"):
            repo.activate("emotion", "99")
        assert client.post("/v1/emotion", json={"text": "hi"}).json()["model_version"] == v1
        with pytest.raises(NexusError, match="not served"):
            repo.activate("churn", "1")


def test_start_up_falls_back_to_an_older_version_when_the_newest_is_corrupt(tmp_path: Path, repository: Path) -> None:
    v1 = newest("funnel", repository)
    _tamper(add_version(repository, "funnel", str(int(v1) + 1)))
    with TestClient(create_app(edge_settings(tmp_path, repository))) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v1/funnel/score", json={"session": SESSION}).json()["model_version"] == v1


def test_without_a_model_the_node_is_live_but_not_ready_until_one_is_installed(
    tmp_path: Path, repository: Path
) -> None:
    moved = tmp_path / "held-back"
    (repository / "funnel").rename(moved)
    with TestClient(create_app(edge_settings(tmp_path, repository, poll_interval_s=0.1))) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/models/funnel/ready").json() == {"name": "funnel", "ready": False}
        scored = client.post("/v1/funnel/score", json={"session": SESSION})
        assert scored.status_code == 503 and "not loaded" in scored.json()["error"]
        assert client.post("/v1/emotion", json={"text": "still serving"}).status_code == 200

        moved.rename(repository / "funnel")  # the poll task picks it up
        deadline = time.monotonic() + 10
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the poll never loaded the installed model"
            time.sleep(0.1)
        assert client.post("/v1/funnel/score", json={"session": SESSION}).status_code == 200


def test_a_bundle_of_the_wrong_family_is_refused(tmp_path: Path, repository: Path) -> None:
    funnel, emotion = newest("funnel", repository), newest("emotion", repository)
    wrong = repository / "emotion" / "50"
    wrong.parent.mkdir(exist_ok=True)
    (repository / "funnel" / funnel).rename(wrong)
    with TestClient(create_app(edge_settings(tmp_path, repository, models=("emotion",)))) as client:
        failures = client.app.state.edge.repository.failures()
        assert "family 'funnel'" in failures["emotion/50"]
        assert client.post("/v1/emotion", json={"text": "hi"}).json()["model_version"] == emotion
