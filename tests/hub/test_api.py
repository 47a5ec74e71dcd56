"""The hub's HTTP API on a real server (127.0.0.1): auth, registry, rollout, bad input."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from hub.archive import pack
from hub.client import HubError, OperatorClient
from hub.registry import bucket
from hub.store.base import Store
from models.bundle import verify_bundle
from nexus_service.keyfiles import public_key_from_b64
from nexus_tools.processes import ServerProcess, free_port
from nexus_wire.datadir import HubDataDir
from nexus_wire.signed_assignments import AssignmentDocument, signature_verifies
from tests.support.hub import EnrolledNode, RunningHub, enroll_node, make_bundle
from tests.support.metrics import parse, promtool_check, types

pytestmark = pytest.mark.hub_settings(max_upload_bytes=256 << 10, offline_after_s=0.5)


def _assigned(hub: RunningHub, node: EnrolledNode, model: str = "funnel") -> str | None:
    body = hub.http.get("/v1/nodes/me/assignments", headers=node.auth).json()
    return body["models"].get(model, {}).get("version")


def test_secrets_files_are_private(hub: RunningHub) -> None:
    for name in ("admin.token", "hub-signing-key.pem"):
        assert (hub.data_dir / name).stat().st_mode & 0o777 == 0o600


def test_push_versions_signs_and_is_idempotent(hub: RunningHub, tmp_path: Path) -> None:
    first = hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"a"))
    again = hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"a"))
    other = hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"b"))
    assert (first["version"], first["created"]) == ("1", True)
    assert (again["version"], again["created"]) == ("1", False)
    assert (other["version"], other["created"]) == ("2", True)
    # the re-versioned bundle is rewritten and signed consistently: it verifies as version 2
    node = enroll_node(hub)
    dest = tmp_path / "dl"
    dest.mkdir()
    for name in ("manifest.json", "signature.json", "model.onnx"):
        r = hub.http.get(f"/v1/models/funnel/versions/2/files/{name}", headers=node.auth)
        assert r.status_code == 200
        (dest / name).write_bytes(r.content)
    key = public_key_from_b64(hub.http.get("/v1/hub").json()["public_key"])
    assert verify_bundle(dest, key).version == "2"
    assert [m["versions"] for m in hub.admin.models()] == [["1", "2"]]


def test_assign_promote_rollback_resolve_per_node(hub: RunningHub, tmp_path: Path) -> None:
    for payload in (b"v1", b"v2", b"v3"):
        hub.admin.push(make_bundle(tmp_path, "funnel", "1", payload))
    nodes = {r: enroll_node(hub, region=str(r)) for r in (1, 2, 3)}
    assert all(_assigned(hub, n) is None for n in nodes.values())
    hub.admin.promote("funnel", "1", "stable")
    hub.admin.assign("funnel", "2", {"region": "2"})
    assert {r: _assigned(hub, n) for r, n in nodes.items()} == {1: "1", 2: "2", 3: "1"}
    stages = {v["version"]: v["stage"] for v in hub.admin.show("funnel")["versions"]}
    assert stages == {"1": "stable", "2": "canary", "3": "candidate"}
    hub.admin.rollback("funnel")
    assert {r: _assigned(hub, n) for r, n in nodes.items()} == {1: "1", 2: "1", 3: "1"}
    hub.admin.rollback("funnel")
    assert _assigned(hub, nodes[1]) is None
    with pytest.raises(HubError) as err:
        hub.admin.rollback("funnel")
    assert err.value.status == 409


def test_canary_percent_is_deterministic_by_node_hash(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"v1"))
    hub.admin.push(make_bundle(tmp_path, "funnel", "2", b"v2"))
    hub.admin.promote("funnel", "1", "stable")
    hub.admin.promote("funnel", "2", "canary", percent=50)
    nodes = [enroll_node(hub) for _ in range(12)]
    for node in nodes:
        expected = "2" if bucket(node.node_id, "funnel") < 50 else "1"
        assert _assigned(hub, node) == expected == _assigned(hub, node)


def test_assignments_etag_304(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1"))
    node = enroll_node(hub, region="1")
    url, headers = "/v1/nodes/me/assignments", node.auth
    first = hub.http.get(url, headers=headers)
    assert hub.http.get(url, headers={**headers, "If-None-Match": first.headers["ETag"]}).status_code == 304
    hub.admin.promote("funnel", "1", "stable")
    changed = hub.http.get(url, headers={**headers, "If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and changed.json()["models"]["funnel"]["version"] == "1"
    # re-signed (a later issued_at) on every 200, yet the same assignment is still a 304
    assert hub.http.get(url, headers={**headers, "If-None-Match": changed.headers["ETag"]}).status_code == 304


def test_assignments_are_a_document_signed_for_the_node(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1"))
    hub.admin.promote("funnel", "1", "stable")
    node = enroll_node(hub, region="1")
    key = public_key_from_b64(hub.http.get("/v1/hub").json()["public_key"])
    first = hub.http.get("/v1/nodes/me/assignments", headers=node.auth).json()
    document = AssignmentDocument.model_validate(first)
    assert document.node_id == node.node_id and document.models["funnel"].version == "1"
    assert signature_verifies(first, key)
    assert not signature_verifies({**first, "node_id": "n-another"}, key)  # bound to the node
    assert not signature_verifies({**first, "issued_at": first["issued_at"] - 60}, key)  # and to the time
    later = hub.http.get("/v1/nodes/me/assignments", headers=node.auth).json()
    assert later["issued_at"] >= first["issued_at"] and signature_verifies(later, key)


def test_heartbeat_and_offline(hub: RunningHub, tmp_path: Path) -> None:
    node = enroll_node(hub, region="3")
    hb = {"models": {"funnel": "1"}, "health": "ok", "request_rate": 2.5, "queue_depth": 1}
    reply = hub.http.post("/v1/nodes/me/heartbeat", json=hb, headers=node.auth)
    assert reply.status_code == 200 and reply.json()["superlink"] is None  # this hub runs no SuperLink
    [view] = hub.admin.nodes()
    assert view["status"] == "online" and view["heartbeat"]["request_rate"] == 2.5 and view["tags"] == {"region": "3"}
    time.sleep(hub.settings.offline_after_s + 0.2)
    assert hub.admin.nodes()[0]["status"] == "offline"


def test_enrollment_token_is_one_time(hub: RunningHub) -> None:
    token = hub.admin.create_token({"region": "1"})["token"]
    assert hub.http.post("/v1/enroll", json={"token": token}).status_code == 201
    second = hub.http.post("/v1/enroll", json={"token": token})
    assert second.status_code == 401 and "used" in second.json()["error"]
    assert len(hub.admin.nodes()) == 1


@pytest.mark.parametrize("store_kind", ["sqlite"])
# more wrong credentials than the default burst: this test is about answers, not the rate limit
@pytest.mark.hub_settings(max_upload_bytes=256 << 10, offline_after_s=0.5, auth_failure_burst=100)
def test_auth_missing_wrong_and_wrong_role_change_nothing(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1"))
    node = enroll_node(hub)
    bundle = pack(make_bundle(tmp_path, "funnel", "5", b"intruder"))
    operator_calls = [
        ("POST", "/v1/models", {"content": bundle}),
        ("POST", "/v1/models/funnel/promote", {"json": {"version": "1", "stage": "stable"}}),
        ("POST", "/v1/models/funnel/assign", {"json": {"version": "1", "select": {}}}),
        ("POST", "/v1/models/funnel/rollback", {}),
        ("POST", "/v1/tokens", {"json": {"tags": {}}}),
        ("GET", "/v1/nodes", {}),
        ("GET", "/v1/models", {}),
    ]
    before = hub.admin.show("funnel")
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic x"}, 401),
        (node.auth, 403),
    ):
        for method, path, kwargs in operator_calls:
            r = hub.http.request(method, path, headers=headers, **kwargs)
            assert r.status_code == status, (method, path, r.text)
            assert r.json()["error"]
    forged = {"Authorization": f"Bearer node.{node.node_id}.not-the-secret"}
    assert hub.http.get("/v1/nodes/me/assignments", headers=forged).status_code == 401
    assert hub.http.get("/v1/nodes/me/assignments").status_code == 401
    assert (
        hub.http.post(
            "/v1/nodes/me/heartbeat",
            json={"health": "ok"},
            headers={"Authorization": f"Bearer {(hub.data_dir / 'admin.token').read_text()}"},
        ).status_code
        == 403
    )
    assert hub.admin.show("funnel") == before
    assert len(hub.admin.nodes()) == 1 and hub.admin.nodes()[0]["last_seen"] is None


def _tar(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _claims(size: int) -> bytes:
    """A tar whose one header claims ``size`` bytes it does not carry."""
    info = tarfile.TarInfo("model.onnx")
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024


@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_bad_input_is_4xx_json_naming_the_problem(hub: RunningHub, tmp_path: Path) -> None:
    good = make_bundle(tmp_path, "funnel", "1")
    manifest = (good / "manifest.json").read_bytes()
    tampered = _tar({"manifest.json": manifest, "model.onnx": b"weights-v2"})
    admin = {"Authorization": f"Bearer {(hub.data_dir / 'admin.token').read_text()}"}
    cases = [
        (b"not a tar at all", 422, "not a tar"),
        (_tar({}), 422, "empty"),
        (_tar({"model.onnx": b"x"}), 422, "no manifest.json"),
        (_tar({"manifest.json": b"{nope", "model.onnx": b"x"}), 422, "not valid JSON"),
        (_tar({"manifest.json": manifest}), 422, "model.onnx is missing"),
        (tampered, 422, "sha256 mismatch"),
        (_tar({"../evil": b"x"}), 422, "not a plain top-level file"),
        (_tar({}, dirs=("sub",)), 422, "not a plain top-level file"),
        (_tar({"x" * 129: b"x"}), 422, "not a plain top-level file"),
        (_tar({f"f{i}": b"" for i in range(65)}), 422, "more than 64 members"),
        (_claims(1 << 30), 422, "exceed max_upload_bytes=262144 once extracted"),
        (b"\0" * (300 << 10), 413, "exceeds the limit"),
    ]
    for body, status, words in cases:
        r = hub.http.post("/v1/models", content=body, headers=admin)
        assert r.status_code == status, (words, r.text)
        assert words in r.json()["error"]
    bad_name = make_bundle(tmp_path, "Bad Name", "1")
    r = hub.http.post("/v1/models", content=pack(bad_name), headers=admin)
    assert r.status_code == 422 and "model name" in r.json()["error"]
    assert hub.admin.models() == []

    hub.admin.push(good)
    json_cases = [
        ("POST", "/v1/models/nope/promote", {"version": "1", "stage": "stable"}, 404, "unknown model 'nope'"),
        ("POST", "/v1/models/funnel/promote", {"version": "9", "stage": "stable"}, 404, "no version '9'"),
        ("POST", "/v1/models/funnel/promote", {"version": "1", "stage": "gold"}, 422, "stage"),
        ("POST", "/v1/models/funnel/assign", {"version": "1", "select": {"region": "x y"}}, 422, "select.region"),
        ("POST", "/v1/models/funnel/assign", {"version": "1", "percent": 0}, 422, "percent"),
        ("POST", "/v1/models/funnel/assign", {"version": "1", "extra": 1}, 422, "extra"),
        ("GET", "/v1/models/nope", None, 404, "unknown model"),
        ("POST", "/v1/models/nope/rollback", None, 404, "unknown model"),
        ("POST", "/v1/tokens", {"tags": {"region": "1"}, "ttl_s": -1}, 422, "ttl_s"),
        ("GET", "/v1/nowhere", None, 404, "no route /v1/nowhere"),
    ]
    for method, path, body, status, words in json_cases:
        r = hub.http.request(method, path, json=body, headers=admin)
        assert r.status_code == status, (path, r.text)
        assert words in r.json()["error"], r.text
    r = hub.http.post("/v1/tokens", content=b"{not json", headers=admin)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]  # as on the edge (nexus_service.http)
    node = enroll_node(hub)
    r = hub.http.get("/v1/models/funnel/versions/1/files/nothing.bin", headers=node.auth)
    assert r.status_code == 404 and "no file" in r.json()["error"]
    r = hub.http.post("/v1/nodes/me/heartbeat", json={"health": "ok", "note": "free text"}, headers=node.auth)
    assert r.status_code == 422 and "note" in r.json()["error"]
    assert json.loads(json.dumps(hub.admin.show("funnel")))["versions"][0]["stage"] == "candidate"


def test_second_hub_with_another_key_refuses_the_store(any_store: Store, tmp_path: Path) -> None:
    from hub.settings import HubSettings
    from hub.state import build_hub
    from models.errors import NexusError

    build_hub(HubSettings(data_dir=tmp_path / "a"), any_store)
    with pytest.raises(NexusError, match="initialised by a hub with key"):
        build_hub(HubSettings(data_dir=tmp_path / "b"), any_store)


def test_metrics_of_a_hub_process_pass_promtool_and_the_prometheus_parser(tmp_path: Path) -> None:
    """``nexus hub serve`` after some traffic: request counts and latency by route template."""
    port = free_port()
    argv = [sys.executable, "-m", "nexus_cli", "hub", "serve", "--data-dir", str(tmp_path / "hub"),
            "--port", str(port), "--no-superlink"]  # fmt: skip
    with ServerProcess("hub", argv, port, ready_path="/healthz") as server:
        token = HubDataDir(tmp_path / "hub").admin_token.read_text().strip()
        with OperatorClient(server.url, token) as admin, httpx.Client(base_url=server.url) as http:
            node = enroll_node(SimpleNamespace(http=http, admin=admin), region="1")
            beat = {"models": {"funnel": "1"}, "health": "ok", "request_rate": 2.5, "queue_depth": 1}
            for _ in range(5):
                assert http.post("/v1/nodes/me/heartbeat", json=beat, headers=node.auth).status_code == 200
            assert http.get("/v1/models/funnel").status_code == 401  # no credential
            assert http.get("/no/such/route").status_code == 404
            text = http.get("/metrics").text
    promtool_check(text)
    found = parse(text)
    assert types(text) == {"nexus_hub_requests": "counter", "nexus_hub_request_duration_seconds": "histogram"}
    requests = found["nexus_hub_requests_total"]
    assert requests[frozenset({("route", "/v1/nodes/me/heartbeat"), ("method", "POST"), ("status", "200")})] == 5
    assert requests[frozenset({("route", "/v1/models/{model}"), ("method", "GET"), ("status", "401")})] == 1
    assert requests[frozenset({("route", "unmatched"), ("method", "GET"), ("status", "404")})] == 1
    heartbeat = frozenset({("route", "/v1/nodes/me/heartbeat")})
    assert found["nexus_hub_request_duration_seconds_count"][heartbeat] == 5
    assert found["nexus_hub_request_duration_seconds_bucket"][heartbeat | {("le", "+Inf")}] == 5
