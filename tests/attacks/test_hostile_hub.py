"""Attack 2 of issue 13, against a real ``nexus edge serve`` on loopback: the hub link turned
against the node's filesystem.

Before: a fake hub answering the assignment poll with ``archive_sha256: "/../../../victim"``
made the edge download the manifest into that folder (the staging path was built from the
unsigned digest) and then remove it; with ``"/../.."`` the edge removed its own data dir
(audit log, keys, identity, store). Now the assignment document must be signed by the hub key
pinned at enrollment and every field must match its pattern before anything becomes a path:
the node refuses the answer (its log and ``hub-sync.json`` say why), touches neither folder,
keeps serving, and ``nexus audit verify`` still finds its log intact. The fuzzed variants of
this (every field, every answer) are in tests/edge/test_hostile_hub.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nexus_tools.examples import SESSION
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.signed_assignments import FORMAT
from tests.support.edge import BUNDLES, newest
from tests.support.fake_hub import ASSIGNMENTS, TOKEN, FakeHub
from tests.support.hostile import PRECIOUS, tree
from tests.support.processes import NEXUS, EdgeProcess, wait_for

pytestmark = pytest.mark.slow
ATTACKS = ("/../../../victim", "/../..")


@pytest.fixture
def attacked(tmp_path: Path) -> Iterator[tuple[FakeHub, EdgeProcess, Path]]:
    hub = FakeHub()
    root = tmp_path / "edge"
    version = newest("funnel")
    shutil.copytree(BUNDLES / "funnel" / version, root / "models" / "funnel" / version)
    victim = root / "victim"  # where "/../../../victim" leads from the edge's staging dir
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("not the hub's to touch\n")
    edge = EdgeProcess(root, hub.url, TOKEN)
    try:
        wait_for(lambda: EdgeDataDir(root / "data").identity.exists(), 30, "enrollment")
        wait_for(lambda: hub.polls(ASSIGNMENTS) >= 1 and _ready(edge), 30, "the first signed document")
        yield hub, edge, victim
    finally:
        edge.stop()
        hub.stop()


def _ready(edge: EdgeProcess) -> bool:
    try:
        return httpx.get(edge.url + "/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _refusals(edge: EdgeProcess) -> int:
    return (edge.root / "edge.log").read_text(errors="replace").count("refused the hub's assignments")


def test_traversal_digests_are_refused_and_the_node_keeps_everything(
    attacked: tuple[FakeHub, EdgeProcess, Path],
) -> None:
    hub, edge, victim = attacked
    data = EdgeDataDir(edge.root / "data")
    precious = {name: hashlib.sha256(getattr(data, name).read_bytes()).hexdigest() for name in PRECIOUS}
    victim_before = tree(victim)
    # what the attack served: a manifest for the assigned version, so a vulnerable edge fetches it
    hub.serve_manifest("funnel", "1", {"format": "nexus-bundle/1", "name": "funnel", "version": "1", "files": {}})
    other = Ed25519PrivateKey.generate()
    attacks = 0
    for digest in ATTACKS:
        document = {
            "format": FORMAT,
            "node_id": hub.node_id,
            "issued_at": time.time(),
            "models": {"funnel": {"version": "1", "archive_sha256": digest, "archive_bytes": 100}},
        }
        # as the issue sent it (no signature of the hub's), signed by another key, and signed by the hub's own
        for answer in (document, hub.sign(document, other), hub.sign(document)):
            attacks += 1
            hub.script(ASSIGNMENTS, answer)
            wait_for(lambda n=attacks: _refusals(edge) >= n, 30, f"the refusal of attack {attacks}")
            hub.scripted.clear()  # a good answer between attacks: the node's backoff starts over
            polls = hub.polls(ASSIGNMENTS)
            wait_for(lambda p=polls: hub.polls(ASSIGNMENTS) > p, 30, "a poll after the attack")
            assert tree(victim) == victim_before
            assert all(getattr(data, name).is_file() for name in (*PRECIOUS, "audit_db", "store"))

    rejected = json.loads(data.sync_state.read_text())["rejected"]
    assert len(rejected) >= attacks and all(r["answer"] == "assignments" for r in rejected)
    assert {"archive_sha256" in r["reason"] for r in rejected} == {True}
    assert json.loads(data.sync_state.read_text())["assignments"] == {}
    assert not data.staging.exists() or not any(data.staging.iterdir())
    assert {name: hashlib.sha256(getattr(data, name).read_bytes()).hexdigest() for name in PRECIOUS} == precious

    # it kept serving throughout: readiness and an inference answer
    assert _ready(edge)
    scored = httpx.post(edge.url + "/v1/funnel/score", json={"sessions": [SESSION]}, timeout=10)
    assert scored.status_code == 200 and scored.json()["model_version"] == newest("funnel")

    edge.stop()
    verified = subprocess.run(
        [*NEXUS, "audit", "verify", "--data-dir", str(data.root)], capture_output=True, text=True, timeout=120
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout
