"""An emotion federated run end to end, with real processes on 127.0.0.1: ``nexus hub serve``
with its SuperLink child and two ``nexus edge serve --hub ... --superlink auto`` (the edges
learn the SuperLink from the hub's heartbeat replies), each fed labelled GoEmotions rows
through ``POST /v1/feedback``; one round from ``nexus hub rounds start --model emotion
--wait``. The result must be a signed candidate with all three artifacts and the run's
provenance; once promoted both edges serve it and answer ``POST /v1/emotion`` with it.
Each edge's audit log verifies and holds the hub's receipt for its Flower replies.

tests/e2e/test_federated_funnel.py does the funnel (three edges, two rounds, a hub kill);
this one is the emotion family's path: text features, touched-row int8 updates, the
emotion exporter (ONNX fp32, int8, TFLite) on the hub.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_worker.audit import SEND, AuditReader, verify
from hub.superlink import SuperLink, SuperLinkConfig
from models.bundle import ARTIFACTS, BACKENDS, verify_bundle
from models.families import load_predictor
from nexus_service.keyfiles import load_signing_key
from nexus_tools.traffic import replay_texts
from nexus_wire.datadir import HubDataDir
from tests.support.env import shared_data
from tests.support.processes import NEXUS, EdgeProcess, Federation, running_federation, wait_for

#: labelled feedback rows per edge (GoEmotions-Ekman dev rows, each edge its own)
ROWS_PER_EDGE = 300
#: the hub is asked for a 0.5 s poll: a 13 MB download, verification and model load on a busy 2-core box
PROMOTE_BUDGET_S = 30.0


class EmotionEdge(EdgeProcess):
    """An edge serving only the emotion model, joining whichever SuperLink its hub names."""

    models = "emotion"
    extra_args = ("--superlink", "auto")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    shared_data("goemotions-ekman", "dev.tsv")  # skip (or fail in CI) before starting any process
    with running_federation(tmp_path, "emotion", EmotionEdge, (1, 2)) as fed:
        yield fed


def _feed(edge: EmotionEdge, rows: list[tuple[str, list[str]]]) -> None:
    with httpx.Client(base_url=edge.url, timeout=10) as http:
        for text, labels in rows:
            response = http.post("/v1/feedback", json={"text": text, "labels": labels})
            assert response.status_code == 201, response.text


def _nexus(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NEXUS, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _download(hub_url: str, token: str, version: str, folder: Path) -> dict:
    """The registered bundle over the hub's file API: manifest, signature and every file it lists."""
    folder.mkdir(parents=True)
    with httpx.Client(base_url=hub_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:

        def fetch(name: str) -> bytes:
            response = http.get(f"/v1/models/emotion/versions/{version}/files/{name}")
            assert response.status_code == 200, (name, response.text[:200])
            return response.content

        (folder / "manifest.json").write_bytes(fetch("manifest.json"))
        (folder / "signature.json").write_bytes(fetch("signature.json"))
        manifest = json.loads((folder / "manifest.json").read_text())
        for name in manifest["files"]:
            (folder / name).write_bytes(fetch(name))
    return manifest


@pytest.mark.slow
def test_one_emotion_round_on_two_edges_then_promote(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    hub, edges = fed.hub, fed.edges
    operator = ["--hub", hub.url, "--data-dir", str(hub.data_dir)]
    rows = replay_texts(shared_data(), ROWS_PER_EDGE * len(edges), np.random.default_rng(11))
    started = time.monotonic()
    wait_for(
        lambda: all(e.served() == "1" for e in edges), timeout=60, what="edges serving emotion version 1 from the hub"
    )
    for i, edge in enumerate(edges):
        _feed(edge, rows[i * ROWS_PER_EDGE : (i + 1) * ROWS_PER_EDGE])
    link = SuperLink(SuperLinkConfig(hub.data_dir / "flower", port=fed.superlink_port))
    wait_for(
        lambda: len(link.online_nodes()) == 2, timeout=60, what="both SuperNodes (joined via --superlink auto) online"
    )
    for edge in edges:
        assert (edge.root / "data" / "hub-superlink").read_text().strip() == f"127.0.0.1:{fed.superlink_port}"

    run_started = time.monotonic()
    done = _nexus(
        "hub",
        "rounds",
        "start",
        "--model",
        "emotion",
        "--rounds",
        "1",
        "--min-nodes",
        "2",
        "--timeout",
        "60",
        "--wait",
        "--json",
        *operator,
        timeout=300,
    )
    run_seconds = time.monotonic() - run_started
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout)
    assert run["status"] == "finished" and run["rounds_done"] == 1 and len(run["participants"]) == 2, run
    assert run["score_name"] == "macro_f1" and run["base_version"] == "1"
    [rnd] = run["rounds"]
    assert rnd["participants"] == 2 and rnd["rejected"] == [] and rnd["train_failures"] == 0 and rnd["eval_nodes"] == 2
    assert 0 < rnd["loss"] < 5 and 0 <= rnd["score"] <= 1 and rnd["bytes_in"] > 0 and rnd["bytes_out"] > 0
    version = run["version"]
    assert version == "2"

    # the candidate: registered with the run's provenance, not yet on any edge
    shown = json.loads(_nexus("hub", "models", "show", "emotion", "--json", *operator, timeout=30).stdout)
    candidate = next(v for v in shown["versions"] if v["version"] == version)
    assert candidate["stage"] == "candidate" and candidate["parent_version"] == "1"
    federated = candidate["provenance"]["federated"]
    assert federated["run_id"] == run["run_id"] and federated["rounds"] == 1
    assert federated["participants"] == sorted(run["participants"])
    assert all(e.served() == "1" for e in edges), "a candidate must not reach the edges before promotion"

    # its bundle: signed by the hub, every file as listed, all three artifacts load and agree
    manifest = _download(hub.url, fed.token, version, tmp_path / "candidate")
    bundle = verify_bundle(tmp_path / "candidate", load_signing_key(HubDataDir(hub.data_dir).signing_key).public_key())
    assert set(ARTIFACTS.values()) <= set(manifest["files"])
    assert (
        manifest["family"] == "emotion"
        and manifest["metrics"]["federated_held_out"]["numpy"]["macro_f1"] == rnd["score"]
    )
    probe = [text for text, _ in rows[:8]]
    scores = {b: load_predictor(bundle.path, b).predict(probe) for b in BACKENDS}
    for backend in BACKENDS:
        assert scores[backend].shape == (len(probe), len(manifest["labels"]))
        assert (
            np.max(np.abs(scores[backend] - scores["onnx"]))
            <= manifest["tolerance"]["max_abs_diff"].get(backend, 0.0) + 1e-6
        )

    promoted = _nexus("hub", "models", "promote", "emotion", version, "--stage", "stable", *operator, timeout=30)
    assert promoted.returncode == 0, promoted.stderr
    t0 = time.monotonic()
    wait_for(
        lambda: all(e.served() == version for e in edges),
        timeout=PROMOTE_BUDGET_S,
        what=f"both edges serving emotion {version}",
    )
    reached = time.monotonic() - t0
    labels = manifest["labels"]
    for edge in edges:
        answer = httpx.post(edge.url + "/v1/emotion", json={"texts": probe}, timeout=10)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "emotion" and body["model_version"] == version and len(body["results"]) == len(probe)
        for result in body["results"]:
            assert list(result["scores"]) == labels and all(0.0 <= s <= 1.0 for s in result["scores"].values())
            assert set(result["labels"]) <= set(labels) and result["top"] in labels

    # the audit logs, read with the edges stopped (a live edge appends heartbeats meanwhile)
    for edge in edges:
        edge.stop()
    for edge in edges:
        data = edge.root / "data"
        result = verify(data)
        assert result.ok, result.message()
        reader = AuditReader(data)
        replies = [
            e
            for e in reader.entries(SEND)
            if e.channel == "flower" and e.kind in ("model-update", "evaluation-metrics")
        ]
        assert sorted(e.kind for e in replies) == ["evaluation-metrics", "model-update"]
        receipts = reader.receipts()
        for entry in replies:
            assert entry.id in receipts, f"{edge.root.name}: Flower {entry.kind} without the hub's receipt"
            receipt = json.loads(receipts[entry.id])
            assert (receipt["sha256"], receipt["bytes"]) == (entry.sha256, entry.bytes)
    print(
        f"\nemotion federated run {run['run_id']}: {run_seconds:.1f} s for 1 round"
        f" ({rnd['duration_s']:.1f} s in Flower), "
        f"update bytes {rnd['update_bytes']}, out {rnd['bytes_out']} B, in {rnd['bytes_in']} B,"
        f" loss {rnd['loss']:.4f}, "
        f"macro_f1 {rnd['score']:.4f}; version {version} on both edges {reached:.1f} s after promotion; "
        f"{time.monotonic() - started:.1f} s in all"
    )
