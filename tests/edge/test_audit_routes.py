"""``GET /v1/audit/consistency``: the node proves any two of its signed tree heads consistent,
to the operator only, and says what was wrong with a bad query."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from edge_worker.app import create_app
from edge_worker.audit import AuditLog, AuditReader, verify
from nexus_wire.merkle import verify_consistency
from tests.support.edge import edge_settings, operator

URL = "/v1/audit/consistency"


def test_the_operator_gets_a_proof_between_any_two_heads(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, models=("funnel",))
    with TestClient(create_app(settings)) as client, AuditLog(settings.data_dir) as log:
        for i in range(12):
            log.record_send("sync", "http://hub", "heartbeat", b"%d" % i, {"i": i})
        heads = AuditReader(settings.data_dir).tree_heads()
        newest = max(heads)
        for first, second in ((1, 1), (3, 7), (4, 8), (5, newest)):
            reply = client.get(URL, params={"first": first, "second": second}, headers=operator(client))
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert (body["first"]["root"], body["second"]["root"]) == (heads[first].root, heads[second].root)
            assert heads[second].verifies(log.public_key) and body["second"]["signature"] == heads[second].signature
            proof = [bytes.fromhex(p) for p in body["proof"]]
            root1, root2 = bytes.fromhex(body["first"]["root"]), bytes.fromhex(body["second"]["root"])
            assert verify_consistency(first, second, root1, root2, proof)
        # without second: to the newest head
        body = client.get(URL, params={"first": 2}, headers=operator(client)).json()
        assert body["second"]["size"] == newest and body["first"]["size"] == 2
        assert "/v1/audit/consistency" in client.get("/openapi.json").json()["paths"]
    assert verify(settings.data_dir).ok


def test_only_the_operator_and_only_a_good_query(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, models=("funnel",))
    with TestClient(create_app(settings)) as client:
        with AuditLog(settings.data_dir) as log:
            log.record_send("sync", "http://hub", "heartbeat", b"{}", {})
        size = AuditReader(settings.data_dir).tree_head().size
        assert client.get(URL, params={"first": 1}).status_code == 401
        assert client.get(URL, params={"first": 1}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        for params, status, words in [
            ({}, 422, "first: Field required"),
            ({"first": "one"}, 422, "first: Input should be a valid integer"),
            ({"first": "0"}, 422, "first: Input should be greater than or equal to 1"),
            ({"first": "1.5"}, 422, "first:"),
            ({"first": str(2**60)}, 422, "first: Input should be less than or equal to"),
            ({"first": "2", "second": "1"}, 422, "first (2) must not exceed second (1)"),
            ({"first": "1", "size": "3"}, 422, "size: Extra inputs are not permitted"),
            ({"first": "1", "second": str(size + 1)}, 404, f"the audit log holds {size} entries"),
            ({"first": str(size + 1)}, 404, f"no signed tree head of size {size + 1}"),
        ]:
            reply = client.get(URL, params=params, headers=operator(client))
            assert reply.status_code == status and words in reply.json()["error"], (params, reply.text)
