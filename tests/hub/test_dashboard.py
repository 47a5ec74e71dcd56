"""The dashboard over HTTP on a real hub (127.0.0.1) and a real store: sessions, CSRF, and
every page rendering the store's real data."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from hub.dashboard.routes import COOKIE
from hub.dashboard.session import SESSION_TTL_S, Sessions
from hub.dashboard.views import flat_metrics
from hub.store.base import RunRecord
from nexus_wire.assignment import ASSIGNED
from tests.support.hub import EnrolledNode, RunningHub, enroll_node, make_bundle, store_for
from tests.support.processes import wait_for

PAGES = ("nodes", "rounds", "models", "funnels", "privacy")


pytestmark = pytest.mark.hub_settings(offline_after_s=5.0)


def _token(hub: RunningHub) -> str:
    return (hub.data_dir / "admin.token").read_text().strip()


def _login(hub: RunningHub) -> httpx.Client:
    client = httpx.Client(base_url=hub.url)
    reply = client.post("/dashboard/login", data={"token": _token(hub)})
    assert reply.status_code == 303 and reply.headers["location"] == "/dashboard/nodes", reply.text
    return client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def _node_with_heartbeat(hub: RunningHub, heartbeat: dict[str, object], **tags: str) -> EnrolledNode:
    """A node enrolled with ``tags`` that has sent ``heartbeat``."""
    node = enroll_node(hub, **tags)
    assert hub.http.post("/v1/nodes/me/heartbeat", json=heartbeat, headers=node.auth).status_code == 200
    return node


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_every_page_needs_a_session(hub: RunningHub) -> None:
    anonymous = hub.http
    for page in PAGES:
        reply = anonymous.get(f"/dashboard/{page}")
        assert reply.status_code == 303 and reply.headers["location"] == "/dashboard/login"
    forged = httpx.Client(base_url=hub.url, cookies={COOKIE: "1795000000.abc.0000"})
    assert forged.get("/dashboard/models").status_code == 303
    assert anonymous.post("/dashboard/models/funnel/rollback", data={"csrf": "x"}).status_code == 401
    # the operator API's bearer token is not a dashboard session, and vice versa
    assert anonymous.get("/dashboard/models", headers={"Authorization": f"Bearer {_token(hub)}"}).status_code == 303
    assert anonymous.get("/dashboard/static/dashboard.css").status_code == 200  # assets are public


def test_login_checks_the_admin_token_and_sets_a_strict_cookie(hub: RunningHub) -> None:
    client = httpx.Client(base_url=hub.url)
    wrong = client.post("/dashboard/login", data={"token": "not-the-token"})
    assert wrong.status_code == 401 and "not this hub" in wrong.text and COOKIE not in client.cookies
    node_id, _ = _node_with_heartbeat(hub, {"health": "ok"})
    assert client.post("/dashboard/login", data={"token": f"node.{node_id}.x"}).status_code == 401

    reply = client.post("/dashboard/login", data={"token": _token(hub)})
    cookie = reply.headers["set-cookie"]
    assert reply.status_code == 303
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    page = client.get("/dashboard/nodes")
    assert page.status_code == 200
    assert (
        "script-src 'self'" in page.headers["content-security-policy"] and page.headers["cache-control"] == "no-store"
    )
    logout = client.post("/dashboard/logout", data={"csrf": _csrf(page.text)})
    assert logout.status_code == 303
    assert client.get("/dashboard/nodes").status_code == 303


def test_sessions_expire_and_die_with_the_token() -> None:
    now = [1_800_000_000.0]
    sessions = Sessions("token-a", clock=lambda: now[0])
    cookie = sessions.issue()
    assert sessions.read(cookie) is not None
    assert Sessions("token-b", clock=lambda: now[0]).read(cookie) is None
    assert sessions.read(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")) is None
    now[0] += SESSION_TTL_S + 1
    assert sessions.read(cookie) is None


def test_post_buttons_need_the_session_csrf_token(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"a"))
    hub.admin.promote("funnel", "1", "stable")
    client = _login(hub)
    csrf = _csrf(client.get("/dashboard/models").text)
    for data, headers in (
        ({}, {}),
        ({"csrf": "0" * 64}, {}),
        ({"csrf": csrf}, {"Origin": "http://evil.example"}),
    ):
        reply = client.post("/dashboard/models/funnel/rollback", data=data, headers=headers)
        assert reply.status_code == 403, (data, headers)
    other = _login(hub)  # another session's token does not fit this one
    assert other.post("/dashboard/models/funnel/rollback", data={"csrf": csrf}).status_code == 403
    assert hub.admin.show("funnel")["stable"] == "1"  # nothing was rolled back


def test_promote_and_roll_back_buttons_drive_the_registry(hub: RunningHub, tmp_path: Path) -> None:
    for payload in (b"a", b"b"):
        hub.admin.push(make_bundle(tmp_path, "funnel", "1", payload))
    client = _login(hub)
    csrf = _csrf(client.get("/dashboard/models").text)
    reply = client.post(
        "/dashboard/models/funnel/promote",
        data={"csrf": csrf, "version": "1", "stage": "stable"},
        follow_redirects=True,
    )
    assert "funnel v1 promoted to stable" in reply.text
    reply = client.post(
        "/dashboard/models/funnel/promote",
        data={"csrf": csrf, "version": "2", "stage": "canary", "percent": "25"},
        follow_redirects=True,
    )
    assert "funnel v2 promoted to canary (25% of nodes)" in reply.text
    rollout = hub.admin.show("funnel")["rollout"]
    assert [(a["kind"], a["version"], a["percent"]) for a in rollout] == [("stable", "1", 100), ("assign", "2", 25)]

    reply = client.post("/dashboard/models/funnel/rollback", data={"csrf": csrf}, follow_redirects=True)
    assert "rolled back the assign of v2" in reply.text
    assert [a["active"] for a in hub.admin.show("funnel")["rollout"]] == [True, False]
    # the outcome is shown once, then gone
    assert "rolled back the assign" not in client.get("/dashboard/models").text

    # a bad request comes back as an escaped message, not a page of someone else's HTML
    reply = client.post(
        "/dashboard/models/funnel/promote",
        data={"csrf": csrf, "version": "<b>9</b>", "stage": "stable"},
        follow_redirects=True,
    )
    assert reply.status_code == 200 and "&lt;b&gt;9&lt;/b&gt;" in reply.text and "<b>9</b>" not in reply.text


def test_every_page_renders_the_stores_real_data(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"a"))
    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"b"))
    hub.admin.promote("funnel", "1", "stable")
    hub.admin.assign("funnel", "2", {"region": "2"})
    first, first_auth = _node_with_heartbeat(
        hub, {"health": "ok", "models": {"funnel": "1"}, "request_rate": 42.5, "queue_depth": 3}, region="1"
    )
    second, _ = _node_with_heartbeat(
        hub, {"health": "degraded", "models": {"funnel": "1"}, "bundle_refusals": 1}, region="2"
    )

    # a funnel experiment with counts from a node, through the funnel API (docs/funnels.md)
    admin = {"Authorization": f"Bearer {_token(hub)}"}
    assert hub.http.post("/v1/funnels", json={"id": "shop", "steps": ["view", "buy"]}, headers=admin).status_code == 201
    experiment = {
        "id": "checkout",
        "funnel_id": "shop",
        "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}],
        "decision_step": "buy",
        "allocation": "fixed",
    }
    assert hub.http.post("/v1/experiments", json=experiment, headers=admin).status_code == 201
    assert hub.http.post("/v1/experiments/checkout/start", headers=admin).status_code == 200
    counts = {
        ("A", ASSIGNED): 400,
        ("A", "view"): 400,
        ("A", "buy"): 40,
        ("B", ASSIGNED): 410,
        ("B", "view"): 410,
        ("B", "buy"): 82,
    }
    report = {
        "node_id": first,
        "counts": [{"experiment": "checkout", "variant": v, "step": s, "count": c} for (v, s), c in counts.items()],
    }
    assert hub.http.post("/v1/nodes/me/counters", json=report, headers=first_auth).status_code == 200

    # a federated run as the hub's watcher records it (the Flower side is the browser test's)
    now = time.time()
    run = RunRecord(
        "r-test",
        "funnel",
        "finished",
        {"rounds": 2, "strategy": "fedavg"},
        "1",
        now - 60,
        now,
        now + 600,
        flower_run_id=7,
        version="2",
        score_name="roc_auc",
        participants=[first, 12],  # one node named by its hub id, one (an older edge) by Flower's
        rounds_done=2,
    )
    hub.store.put_run(run)
    for n, score in ((1, 0.71), (2, 0.74)):
        hub.store.put_round(
            "r-test",
            n,
            {
                "round": n,
                "participants": 2,
                "nodes": [11, 12],
                "rejected": [],
                "train_loss": 0.5,
                "loss": 0.45,
                "score": score,
                "bytes_out": 20000,
                "bytes_in": 9000,
                "duration_s": 12.0,
            },
        )

    client = _login(hub)
    pages = {page: client.get(f"/dashboard/{page}") for page in PAGES}
    assert all(reply.status_code == 200 for reply in pages.values())
    text = {page: _text(reply.text) for page, reply in pages.items()}

    nodes = text["nodes"]
    assert "2 of 2 nodes online" in nodes and first in nodes and second in nodes
    assert "region=1" in nodes and "funnel v1" in nodes and "42.5" in nodes and "degraded" in nodes
    assert "funnel → v2" in nodes  # region 2 is assigned v2 but still serves v1
    assert "1 refused bundle(s)" in nodes

    models = text["models"]
    assert "stable: v1" in models and "canary" in models and "roc_auc 0.9" in models
    assert 'id="data-funnel"' in pages["models"].text  # the metrics chart's data block

    rounds = text["rounds"]
    assert "r-test" in rounds and "2 / 2 rounds" in rounds and "v1 → v2 (candidate)" in rounds and "2 node(s)" in rounds
    assert "0.74" in rounds and "39.1 KB to nodes" in rounds
    assert f'href="/dashboard/nodes#node-{first}"' in pages["rounds"].text
    assert 'hub id">12</code>' in pages["rounds"].text  # a Flower id, unlinked, says what it is
    assert "cannot yet map" not in rounds
    assert f'id="node-{first}"' in pages["nodes"].text  # where the Rounds page's link lands

    funnels = text["funnels"]
    assert "checkout" in funnels and "view → buy" in funnels and "running" in funnels
    assert "10.0%" in funnels and "20.0%" in funnels  # A and B conversion at buy
    beat = re.search(r"buy \(decision\) 82 20\.0% [0-9.–%]+ ([01]\.\d{3})", funnels)
    assert beat and float(beat.group(1)) > 0.99  # P(B beats A) at 82/410 vs 40/400
    assert 'id="wd-checkout"' in pages["funnels"].text  # weights over time

    privacy = text["privacy"]
    assert first in privacy and "not reported by this node" in privacy


def test_empty_hub_pages_say_what_to_do(hub: RunningHub) -> None:
    client = _login(hub)
    expected = {
        "nodes": "No node has enrolled yet",
        "models": "No model has been pushed yet",
        "rounds": "No federated run yet",
        "funnels": "No experiment is defined",
        "privacy": "nothing to audit",
    }
    for page, phrase in expected.items():
        assert phrase in client.get(f"/dashboard/{page}").text


def test_flat_metrics_reads_both_manifest_layouts() -> None:
    nested = {"held_out": {"onnx": {"roc_auc": 0.91, "n": 500}, "tflite": {"roc_auc": 0.9}}}
    assert flat_metrics(nested) == {"held_out/onnx/roc_auc": 0.91, "held_out/tflite/roc_auc": 0.9}
    assert flat_metrics({"roc_auc": 0.9, "note": "x", "ok": True}) == {"roc_auc": 0.9}


def test_round_forms_validate_start_and_stop(hub: RunningHub) -> None:
    client = _login(hub)
    page = client.get("/dashboard/rounds")
    assert "Federated rounds are off on this hub" in page.text and "Start run" not in page.text
    csrf = _csrf(page.text)
    bad = client.post("/dashboard/rounds", data={"csrf": csrf, "model": "funnel", "rounds": "0"}, follow_redirects=True)
    assert "rounds: Input should be greater than or equal to 1" in bad.text
    off = client.post("/dashboard/rounds", data={"csrf": csrf, "model": "funnel", "rounds": "2"}, follow_redirects=True)
    assert "federated rounds are off on this hub" in off.text
    assert hub.store.list_runs() == []

    now = time.time()
    hub.store.put_run(RunRecord("r-live", "funnel", "running", {"rounds": 3}, "1", now, now, now + 600, rounds_done=1))
    page = client.get("/dashboard/rounds").text
    assert 'data-poll="/dashboard/rounds"' in page and "1 / 3 rounds" in _text(page)  # live: the section polls
    stopped = client.post("/dashboard/rounds/r-live/stop", data={"csrf": csrf}, follow_redirects=True)
    assert "Stopped run r-live after 1 round(s)" in stopped.text and "data-poll" not in stopped.text
    assert hub.store.get_run("r-live").status == "stopped"


def test_privacy_page_reads_the_audit_fields_heartbeats_carry(hub: RunningHub) -> None:
    node_id, _ = _node_with_heartbeat(hub, {"health": "ok"})
    now = time.time()
    # the heartbeat fields the page reads once edges send them (docs/hub.md, Dashboard)
    hub.store.record_heartbeat(
        node_id,
        now,
        {"health": "ok", "bytes_sent": 12_800, "audit_verified_at": now - 30, "audit_ok": True, "audit_entries": 17},
    )
    text = _text(_login(hub).get("/dashboard/privacy").text)
    assert "12.5 KB" in text and "30 s ago" in text and "intact entries: 17" in text and "NOT intact" not in text


def test_privacy_page_shows_the_audit_head_and_a_regression(hub: RunningHub, tmp_path: Path) -> None:
    from dataclasses import asdict

    from edge_worker.audit import AuditLog, AuditReader

    with AuditLog(tmp_path / "edge") as log:
        for _ in range(3):
            log.record_retention(0.0, 30, {})
    heads = AuditReader(tmp_path / "edge").tree_heads()
    node_id, auth = _node_with_heartbeat(hub, {"health": "ok", "audit_head": asdict(heads[3])})
    text = _text(_login(hub).get("/dashboard/privacy").text)
    assert f"size 3 {heads[3].root[:12]}…" in text and "regression" not in text
    # the node reports a shorter log: the hub held a larger head (hub/audit_heads.py)
    assert (
        hub.http.post(
            "/v1/nodes/me/heartbeat", json={"health": "ok", "audit_head": asdict(heads[2])}, headers=auth
        ).status_code
        == 200
    )
    page = _login(hub).get("/dashboard/privacy").text
    assert 'role="alert"' in page
    assert (
        f"audit regression {node_id} : audit log went back: the hub held size 3, root {heads[3].root[:12]}…; "
        f"the node then reported size 2, root {heads[2].root[:12]}…"
    ) in _text(page)


def test_funnels_page_charts_thompson_weights_over_time(tmp_path: Path) -> None:
    hub = RunningHub(tmp_path / "hub", store_for("sqlite", tmp_path, None), thompson_interval_s=0.2)
    try:
        admin = {"Authorization": f"Bearer {_token(hub)}"}
        node_id, auth = _node_with_heartbeat(hub, {"health": "ok"})
        assert hub.http.post("/v1/funnels", json={"id": "shop", "steps": ["buy"]}, headers=admin).status_code == 201
        experiment = {
            "id": "bandit",
            "funnel_id": "shop",
            "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}],
            "decision_step": "buy",
            "allocation": "thompson",
        }
        assert hub.http.post("/v1/experiments", json=experiment, headers=admin).status_code == 201
        assert hub.http.post("/v1/experiments/bandit/start", headers=admin).status_code == 200
        counts = {("A", ASSIGNED): 500, ("A", "buy"): 25, ("B", ASSIGNED): 500, ("B", "buy"): 60}
        report = {
            "node_id": node_id,
            "counts": [{"experiment": "bandit", "variant": v, "step": s, "count": c} for (v, s), c in counts.items()],
        }
        assert hub.http.post("/v1/nodes/me/counters", json=report, headers=auth).status_code == 200
        # the hub's Thompson loop publishes new weights: a new experiment version
        wait_for(lambda: len(hub.store.experiment_history("bandit")) >= 3, timeout=20, what="a Thompson update")

        page = _login(hub).get("/dashboard/funnels").text
        block = re.search(r'<script type="application/json" id="wd-bandit">(.*?)</script>', page, re.S)
        assert block, "no weights chart data"
        weights = json.loads(block.group(1))
        b = next(s["data"] for s in weights["series"] if s["label"] == "B")
        assert len(weights["labels"]) >= 3 and b[0] == 0.5 and b[-1] > 0.9  # B converts better: its share grows
        assert "Sample ratio not checked (Thompson moves the shares)" in _text(page)
    finally:
        hub.stop()


def test_a_failed_run_and_the_promotion_gate_on_the_pages(hub: RunningHub, tmp_path: Path) -> None:
    from models.bundle import read_manifest, write_manifest

    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"a"))
    hub.admin.promote("funnel", "1", "stable")
    candidate = make_bundle(tmp_path, "funnel", "2", b"b")
    manifest = read_manifest(candidate)
    gate = {"round": 2, "nodes": 3, "candidate": 0.7, "baseline": 0.75, "baseline_version": "1", "delta": -0.05,
            "verdict": "worse"}  # fmt: skip
    manifest["provenance"] = {"federated": {"run_id": "r-gate", "gate": gate}}
    write_manifest(candidate, manifest)
    hub.admin.push(candidate)
    now = time.time()
    reason = "round 1: 2 of 3 node(s) trained, fewer than min-nodes 3 (1 no data)"
    hub.store.put_run(RunRecord("r-bad", "funnel", "failed", {"rounds": 2}, "1", now, now, now + 600, reason=reason))
    failure = {"node": "n-0123456789abcdef", "step": "train", "kind": "no-data", "reason": "no labelled rows"}
    hub.store.put_round("r-bad", 1, {"round": 1, "participants": 2, "train_failures": 1, "failures": [failure]})

    client = _login(hub)
    rounds = _text(client.get("/dashboard/rounds").text)
    assert "failed" in rounds and reason in rounds and "Nodes that took no part (1)" in rounds
    assert "n-0123456789abcdef train no data no labelled rows" in rounds
    page = client.get("/dashboard/models").text
    assert "worse 0.7 vs v1 0.75 (-0.0500, round 2, 3 node(s), run r-gate" in _text(page)
    assert "Promote anyway" in page and 'name="force" value="1"' in page
    csrf = _csrf(page)
    form = {"csrf": csrf, "version": "2", "stage": "stable"}
    refused = client.post("/dashboard/models/funnel/promote", data=form, follow_redirects=True)
    assert "funnel v2 is worse than v1 on the nodes&#39; evaluation data" in refused.text
    assert hub.admin.show("funnel")["stable"] == "1"
    forced = client.post(
        "/dashboard/models/funnel/promote",
        data={**form, "force": "1"},
        follow_redirects=True,
    )
    assert "funnel v2 promoted to stable" in forced.text and hub.admin.show("funnel")["stable"] == "2"
