"""The edge's privacy endpoints: erasures and retention runs land in the audit log, and the
operator reads the audit report over HTTP with the edge's operator token."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.testclient import TestClient

from edge_worker.app import create_app
from edge_worker.audit import ERASURE, RETENTION, AuditLog, AuditReader
from edge_worker.store import LocalStore
from nexus_wire.datadir import EdgeDataDir
from tests.support.edge import edge_settings, operator

VISITOR = "visitor-7f3a-canary"


def test_erasure_retention_and_the_audit_endpoint(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, models=("emotion",), retention_days=1)
    store = LocalStore(settings.data_dir)
    store.add_feedback("an old text", ["joy"], "someone-else", now=time.time() - 3 * 86400)
    store.close()

    with TestClient(create_app(settings)) as client:
        token_file = EdgeDataDir(settings.data_dir).operator_token
        assert token_file.stat().st_mode & 0o777 == 0o600
        for text in ("love it", "meh"):
            assert (
                client.post("/v1/feedback", json={"text": text, "labels": ["joy"], "visitor_id": VISITOR}).status_code
                == 201
            )
        # erasing is the operator's: anonymous or malformed requests erase nothing
        assert client.delete(f"/v1/privacy/visitors/{VISITOR}").status_code == 401
        assert (
            client.delete(f"/v1/privacy/visitors/{VISITOR}", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert client.delete("/v1/privacy/visitors/a%20b", headers=operator(client)).status_code == 422
        assert client.delete(f"/v1/privacy/visitors/{VISITOR}", headers=operator(client)).json() == {
            "visitor_id": VISITOR,
            "erased": 2,
        }

        assert client.get("/v1/privacy/audit").status_code == 401
        assert client.get("/v1/privacy/audit", headers={"Authorization": "Bearer wrong"}).status_code == 401
        reply = client.get("/v1/privacy/audit", headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
        assert reply.status_code == 200, reply.text
        report = reply.json()

    # the start-up retention run deleted the old row and was logged, with its cutoff
    reader = AuditReader(settings.data_dir)
    [retention] = list(reader.entries(RETENTION))
    assert retention.summary["rows"]["feedback"] == 1 and retention.summary["retention_days"] == 1
    [erasure] = list(reader.entries(ERASURE))
    assert erasure.summary["rows"]["feedback"] == 2
    with AuditLog(settings.data_dir) as log:
        assert erasure.summary["visitor"] == log.visitor_digest(VISITOR)
    assert VISITOR.encode() not in EdgeDataDir(settings.data_dir).audit_db.read_bytes()  # only its keyed hash

    assert report["verification"]["ok"] and report["verification"]["entries"] == 2
    assert report["erasures"]["count"] == 1 and report["erasures"]["rows_deleted"] == 2
    assert report["retention"]["count"] == 1 and report["inventory"]["retention_days"] == 1
    tables = {
        t["table"]: t["rows"]
        for db in report["inventory"]["databases"]
        if db["path"] == "edge.sqlite3"
        for t in db["tables"]
    }
    assert tables["feedback"] == 0
