"""Wrong operator tokens on the edge's operator endpoints are rate limited per client address
(nexus_service/rate_limit.py, the hub's default: 10 at once, then 0.5 a second)."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from edge_worker.app import create_app
from tests.support.edge import edge_settings, operator


def test_wrong_operator_tokens_get_429_after_the_burst(tmp_path: Path) -> None:
    app = create_app(edge_settings(tmp_path, models=("emotion",)))
    with TestClient(app) as client:
        wrong = {"Authorization": "Bearer nx_guess"}
        statuses = [client.get("/v1/privacy/audit", headers=wrong).status_code for _ in range(30)]
        assert statuses.count(401) in (10, 11) and statuses.count(429) == 30 - statuses.count(401)
        refused = client.get("/v1/privacy/audit", headers=operator(client))  # the right token is not looked at
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "too many wrong operator tokens" in refused.json()["error"]
        # another address (another client host) of the same app is not limited
        other = TestClient(app, client=("10.0.0.9", 5000))
        assert other.get("/v1/privacy/audit", headers=operator(other)).status_code == 200
