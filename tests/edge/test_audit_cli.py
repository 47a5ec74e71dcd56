"""``nexus audit verify|report`` on a real data dir: exit codes, JSON sections, HTML chart."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import nexus_cli
from edge_worker.audit import AuditLog, BudgetExhausted, PrivacyBudget
from edge_worker.audit.report import build_report, render_html
from nexus_wire.datadir import EdgeDataDir
from tests.support.audit import receipt_for

HUB = "http://127.0.0.1:8700"
SUPERLINK = "127.0.0.1:9092"
DAY = 86400.0


@pytest.fixture
def node(tmp_path) -> Path:
    """A data dir with a local store, sends with receipts, a refusal, an erasure, a retention
    run and a DP budget that ran out."""
    conn = sqlite3.connect(tmp_path / "edge.sqlite3")
    conn.execute("CREATE TABLE feedback (id INTEGER PRIMARY KEY, created_at REAL, visitor_id TEXT, text TEXT)")
    conn.execute("CREATE TABLE settings (key TEXT, value TEXT)")
    now = time.time()
    conn.executemany(
        "INSERT INTO feedback (created_at, visitor_id, text) VALUES (?, ?, ?)",
        [(now - 40 * DAY, "v1", "old"), (now, "v2", "new")],
    )
    conn.commit()
    conn.close()

    hub = Ed25519PrivateKey.generate()
    log = AuditLog(tmp_path)
    log.pin_hub_key(hub.public_key(), HUB)
    for i in range(3):
        entry = log.record_send("counters", HUB, "counters", b"x" * (100 + i), {"keys": 1, "total": i})
        log.attach_receipt(entry.id, receipt_for(hub, entry))
    log.record_send("heartbeat", HUB, "heartbeat", b"{}", {"health": "ok"})
    log.record_refusal("counters", HUB, "heartbeat", "field 'message' is not declared", b"{}")
    budget = PrivacyBudget(tmp_path, epsilon=2.0, delta=1e-5)
    while True:
        try:
            eps = budget.spend(5.0)
        except BudgetExhausted as exc:
            log.record_refusal("flower", SUPERLINK, "model-update", str(exc))
            break
        log.record_send(
            "flower", SUPERLINK, "model-update", b"\x01" * 5000, {"model": "funnel", "dp": {"epsilon": eps}}
        )
    log.record_erasure("v1", {"feedback": 1})
    log.record_retention(now - 30 * DAY, 30, {"feedback": 0})
    log.close()
    return tmp_path


def _tamper(data_dir: Path, sql: str) -> None:
    conn = sqlite3.connect(EdgeDataDir(data_dir).audit_db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(sql)
    conn.close()


def test_verify_exit_codes(node, capsys):
    assert nexus_cli.main(["audit", "verify", "--data-dir", str(node)]) == 0
    assert "audit log intact" in capsys.readouterr().out

    _tamper(node, "UPDATE entries SET destination = 'http://elsewhere' WHERE id = 3")
    assert nexus_cli.main(["audit", "verify", "--data-dir", str(node)]) == 1
    err = capsys.readouterr().err
    assert "entry 3" in err and "Traceback" not in err

    assert nexus_cli.main(["audit", "verify", "--data-dir", str(node), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["first_bad_entry"] == 3


def test_verify_a_missing_dir_or_log_is_a_user_error(tmp_path, capsys):
    assert nexus_cli.main(["audit", "verify", "--data-dir", str(tmp_path / "nope")]) == 2
    assert nexus_cli.main(["audit", "verify", "--data-dir", str(tmp_path)]) == 2
    assert "no audit log" in capsys.readouterr().err


def test_report_json_has_every_section(node, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert nexus_cli.main(["audit", "report", "--data-dir", str(node), "--format", "json", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in (
        "inventory",
        "egress",
        "privacy_budget",
        "refusals",
        "erasures",
        "retention",
        "verification",
        "tree_head",
    ):
        assert key in report
    assert report["verification"]["ok"] is True

    tables = {
        t["table"]: t for db in report["inventory"]["databases"] if db["path"] == "edge.sqlite3" for t in db["tables"]
    }
    assert tables["feedback"]["rows"] == 2 and tables["feedback"]["beyond_retention"] is True
    assert tables["settings"]["oldest"] is None and tables["settings"]["time_column"] is None
    assert report["inventory"]["retention_days"] == 30

    channels = {(g["channel"], g["destination"]): g for g in report["egress"]["by_channel"]}
    assert channels[("counters", HUB)]["messages"] == 3 and channels[("counters", HUB)]["bytes"] == 303
    assert channels[("counters", HUB)]["receipts"] == 3
    assert channels[("flower", SUPERLINK)]["bytes"] == 5000 * channels[("flower", SUPERLINK)]["messages"]

    budget = report["privacy_budget"]
    assert budget["epsilon_spent"] <= 2.0 and budget["rounds"] == channels[("flower", SUPERLINK)]["messages"]
    assert report["refusals"]["count"] == 2
    assert any("privacy budget exhausted" in r["reason"] for r in report["refusals"]["recent"])
    assert report["erasures"]["count"] == 1 and report["erasures"]["rows_deleted"] == 1
    assert "v1" not in json.dumps(report["erasures"])


def test_report_html_is_self_contained_with_a_chart(node, capsys):
    assert nexus_cli.main(["audit", "report", "--data-dir", str(node), "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and page.count("<rect") == 3
    assert "Audit log verified" in page
    for external in ("<script", "src=", "href=", "@import"):
        assert external not in page


def test_report_shows_a_failed_verification(node):
    _tamper(node, "DELETE FROM entries WHERE id = 2")
    _tamper(node, "UPDATE entries SET summary = '{broken' WHERE kind = 'visitor-erasure'")
    report = build_report(node)
    assert report["verification"]["ok"] is False and report["verification"]["first_bad_entry"] == 2
    assert report["erasures"]["count"] == 1  # a corrupt entry is still listed, not a crash
    assert "does NOT verify: entry 2" in render_html(report)
