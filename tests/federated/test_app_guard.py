"""The app guard's verdict (federated/app_guard.py) on tasks as Flower hands them out, the hub's
signed app statements it reads (nexus_wire/apps.py), and where those come from: the hub's
``GET /v1/federation/apps`` and the edge's federation job, which keeps only statements its
pinned hub key verifies. The guard's loop against real Flower processes runs in
tests/attacks/test_foreign_app.py and in every federated round."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.proto.task_pb2 import Task
from flwr.supercore.constant import TaskType
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_worker.audit import REFUSAL, AuditReader, verify
from edge_worker.federation import sync_apps
from edge_worker.hub_link import HubLink
from edge_worker.identity import NodeIdentity
from federated.app_guard import Guard, edge_guard, read_signed_apps
from hub.apps import fab_sha256, write_signed_apps
from hub.superlink import flower_app_dir
from nexus_service.keyfiles import public_key_b64, public_key_from_b64
from nexus_tools.processes import ServerThread
from nexus_wire.apps import SignedApp, SignedApps, app_message, sign_app
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.payloads import FLOWER_APP
from tests.support.hub import RunningHub, enroll_node

HUB = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
DIGEST = "ab" * 32


def _task(fab: str = DIGEST, kind: str = TaskType.CLIENT_APP) -> Task:
    return Task(task_id=7, run_id=42, type=kind, fab_hash=fab)


def _guard(tmp_path: Path, apps: SignedApps, key: Ed25519PrivateKey | None = HUB) -> Guard:
    path = tmp_path / "apps.json"
    write_signed_apps(path, apps)
    return Guard(TaskType.CLIENT_APP, path, lambda: None if key is None else key.public_key())


def test_a_statement_verifies_only_for_its_digest_and_key() -> None:
    app = sign_app(HUB, DIGEST)
    assert app.verifies(HUB.public_key()) and not app.verifies(OTHER.public_key())
    forged = app.model_copy(update={"fab_sha256": "cd" * 32})
    assert not forged.verifies(HUB.public_key())
    # a signature over the bare digest (no domain separation) is not a statement
    bare = base64.b64encode(HUB.sign(DIGEST.encode())).decode()
    assert not app.model_copy(update={"signature": bare}).verifies(HUB.public_key())
    assert app_message(DIGEST) == b'{"fab_sha256":"' + DIGEST.encode() + b'","format":"nexus-fab/1"}'


@pytest.mark.parametrize(
    "member, value",
    [
        ("fab_sha256", "AB" * 32),
        ("fab_sha256", "ab" * 31),
        ("fab_sha256", "../" * 22),
        ("key_id", "x"),
        ("signature", 5),
    ],
)
def test_a_malformed_statement_is_refused(member: str, value: object) -> None:
    with pytest.raises(ValidationError):
        SignedApp.model_validate({**sign_app(HUB, DIGEST).model_dump(), member: value})
    with pytest.raises(ValidationError):  # and no list longer than a hub needs
        SignedApps.model_validate({"apps": [sign_app(HUB, DIGEST).model_dump()] * 17})


def test_only_a_task_of_a_fab_the_hub_signed_may_run(tmp_path: Path) -> None:
    guard = _guard(tmp_path, SignedApps(apps=(sign_app(HUB, DIGEST), sign_app(OTHER, "cd" * 32))))
    assert guard.refusal(_task()) is None
    assert "is not signed by hub key" in str(guard.refusal(_task("cd" * 32)))  # signed, by another key
    assert "is not signed by hub key" in str(guard.refusal(_task("ef" * 32)))
    assert "task type" in str(guard.refusal(_task(kind=TaskType.SERVER_APP)))
    assert "no FAB digest" in str(guard.refusal(_task("")))
    assert "no hub key" in str(_guard(tmp_path, SignedApps(apps=(sign_app(HUB, DIGEST),)), None).refusal(_task()))


@pytest.mark.parametrize("content", [b"", b"not json", b'{"apps": [1]}', b'{"apps": [], "more": 1}'])
def test_an_unreadable_app_list_lets_nothing_run(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "apps.json"
    path.write_bytes(content)
    assert read_signed_apps(path) == SignedApps() == read_signed_apps(tmp_path / "missing.json")
    assert Guard(TaskType.CLIENT_APP, path, HUB.public_key).refusal(_task()) is not None


def test_the_edge_guard_trusts_the_pinned_key_and_logs_each_refusal(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    guard, audit = edge_guard(data)
    try:
        write_signed_apps(EdgeDataDir(data).trusted_apps, SignedApps(apps=(sign_app(HUB, DIGEST),)))
        assert guard.refusal(_task()) == "no hub key is pinned yet"
        audit.pin_hub_key(HUB.public_key(), "http://hub.invalid")
        assert guard.refusal(_task()) is None
        reason = guard.refusal(_task("ef" * 32))
        assert reason is not None
        guard.on_refusal(_task("ef" * 32), reason)
    finally:
        audit.close()
    (entry,) = list(AuditReader(data).entries(REFUSAL))
    assert entry.kind == FLOWER_APP and entry.reason == reason
    assert entry.summary == {"run": 42, "task": 7, "fab_sha256": "ef" * 32, "app": TaskType.CLIENT_APP}
    assert verify(data).ok


@pytest.mark.hub_settings(superlink="127.0.0.1:9")  # rounds on (an external SuperLink): no Flower started
def test_the_hub_signs_the_fab_of_the_app_it_submits_for_its_nodes_only(hub: RunningHub) -> None:
    node = enroll_node(hub, region="1")
    answer = hub.http.get("/v1/federation/apps", headers=node.auth)
    assert answer.status_code == 200
    (app,) = SignedApps.model_validate(answer.json()).apps
    # the key the node pinned at enrollment (GET /v1/hub names the same)
    assert app.verifies(public_key_from_b64(hub.http.get("/v1/hub").json()["public_key"]))
    assert not app.verifies(OTHER.public_key())
    assert app.fab_sha256 == fab_sha256(flower_app_dir())  # what `flwr run` of the shipped folder submits
    assert hub.http.get("/v1/federation/apps").status_code == 401
    admin = {"Authorization": f"Bearer {(hub.data_dir / 'admin.token').read_text().strip()}"}
    assert hub.http.get("/v1/federation/apps", headers=admin).status_code == 403


def test_the_edge_keeps_only_statements_its_pinned_key_verifies(tmp_path: Path) -> None:
    good, forged = sign_app(HUB, DIGEST), sign_app(OTHER, "cd" * 32)
    answers = [{"apps": [good.model_dump(), forged.model_dump()]}, {"apps": "nope"}]

    async def apps(request: Request) -> Response:
        return JSONResponse(answers.pop(0))

    fake = ServerThread(Starlette(routes=[Route("/v1/federation/apps", apps)])).start()
    identity = NodeIdentity("n-1", "secret", public_key_b64(HUB.public_key()), {})
    data = tmp_path / "edge"

    async def scenario() -> tuple[bool, bool]:
        link = HubLink.open(fake.url, data)
        link.gateway.identity = identity
        try:
            return await sync_apps(link, identity), await sync_apps(link, identity)
        finally:
            await link.aclose()

    try:
        first, second = asyncio.run(scenario())
    finally:
        fake.stop()
    assert (first, second) == (True, False)
    # the forged statement was dropped; the answer that was no list left the kept one in force
    kept = json.loads(EdgeDataDir(data).trusted_apps.read_text())
    assert kept == {"apps": [good.model_dump()]}
