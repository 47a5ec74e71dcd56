"""One HubLink per node (edge_worker/hub_link.py): model sync, funnel sync and federation
share its gateway, so every kind sent to the hub shows on ``/metrics``; and every file the
node writes in a real run is one its data-dir layout (nexus_wire/datadir.py) names."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.testclient import TestClient

from edge_worker.app import create_app
from hub.client import FunnelClient
from nexus_wire.datadir import EdgeDataDir, HubDataDir
from nexus_wire.payloads import COUNTERS
from tests.support.edge import edge_settings
from tests.support.hub import RunningHub
from tests.support.metrics import sample


def _egress_messages(metrics: str, kind: str) -> float:
    return sample(metrics, "nexus_edge_egress_messages_total", kind=kind) or 0.0


def test_counter_reports_reach_metrics_and_the_node_writes_only_named_files(hub: RunningHub, tmp_path: Path) -> None:
    with FunnelClient(hub.url, HubDataDir(hub.data_dir).admin_token.read_text().strip()) as admin:
        admin.create_funnel("shop", ["view", "buy"])
        admin.create_experiment(
            {"id": "e1", "funnel_id": "shop", "variants": [{"name": "A"}, {"name": "B"}], "decision_step": "buy"}
        )
        admin.start("e1")
        token = admin.create_token({"region": "1"})["token"]
    settings = edge_settings(
        tmp_path, models=("funnel",), hub_url=hub.url, enroll_token=token, funnel_sync_s=0.2, privacy_epsilon=4.0
    )
    with TestClient(create_app(settings)) as client:
        state = client.app.state.edge
        deadline = time.monotonic() + 30
        while client.app.state.funnels.etag is None:  # enrolled by the model sync, then the config pulled
            assert time.monotonic() < deadline, "the node did not pull the hub's funnel config"
            time.sleep(0.05)
        assert client.post("/v1/funnels/shop/assign", json={"visitor_id": "v1"}).status_code == 200
        while _egress_messages(client.get("/metrics").text, COUNTERS) < 1:
            assert time.monotonic() < deadline, "no counter report on /metrics"
            time.sleep(0.05)
        metrics = client.get("/metrics").text
        assert _egress_messages(metrics, "heartbeat") >= 1  # the model sync's kinds, on the same gateway
        assert (sample(metrics, "nexus_edge_egress_bytes_total", kind=COUNTERS, direction="out") or 0) >= 1
        assert state.hub is not None and state.hub.gateway.messages[COUNTERS] >= 1
        assert client.get("/v1/privacy/audit", headers={"Authorization": f"Bearer {client.app.state.operator_token}"})
    layout = EdgeDataDir(settings.data_dir)
    written = sorted(p for p in layout.root.rglob("*") if p.is_file())
    assert layout.store in written and layout.identity in written and layout.funnel_config in written
    assert [str(p.relative_to(layout.root)) for p in written if not layout.names(p)] == []


def test_the_layouts_keep_the_file_names_on_disk(tmp_path: Path) -> None:
    edge = {name: str(path.relative_to(tmp_path)) for name, path in EdgeDataDir(tmp_path).paths().items()}
    assert edge == {
        "store": "edge.sqlite3",
        "funnel_config": "funnel-config.json",
        "audit_db": "audit.sqlite3",
        "audit_key": "node-audit-key.pem",
        "audit_salt": "audit-salt",
        "operator_token": "operator.token",
        "privacy_budget": "privacy-budget.json",
        "privacy_budget_lock": "privacy-budget.json.lock",
        "models": "models",
        "identity": "hub-identity.json",
        "sync_state": "hub-sync.json",
        "staging": "hub-staging",
        "leader_lock": "hub-sync.lock",
        "superlink": "hub-superlink",
        "supernode_log": "supernode.log",
        "flwr_home": "flwr-home",
        "trusted_apps": "hub-apps.json",
        "superexec_secret": "superexec.secret",
        "guard_log": "app-guard.log",
        "supernode_pid": "supernode.pid",
        "guard_pid": "app-guard.pid",
        "metrics": "metrics",
    }
    hub = HubDataDir(tmp_path)
    assert {name: str(path.relative_to(tmp_path)) for name, path in hub.paths().items()} == {
        "signing_key": "hub-signing-key.pem",
        "admin_token": "admin.token",
        "admin_token_next": "admin.token.next",
        "store": "hub.sqlite3",
        "blobs": "blobs",
        "rounds": "rounds",
        "flower": "flower",
    }
    superlink = hub.superlink
    named = [p.relative_to(tmp_path) for p in (superlink.database, superlink.log, superlink.pid, superlink.flwr_home)]
    assert named == [
        Path("flower/superlink.db"),
        Path("flower/superlink.log"),
        Path("flower/superlink.pid"),
        Path("flower/flwr-home"),
    ]
