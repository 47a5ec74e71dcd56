"""Issue 14, revocation, against a real ``nexus hub serve`` and the real ``nexus`` CLI.

Before: a dashboard cookie still worked after logout, a node's credential could not be
revoked, and a changed ``admin.token`` made the hub refuse its own store. Now
``nexus hub nodes revoke NODE`` makes the node's next request a 401 (and shows it revoked),
logout ends the session in the store, and ``nexus hub token rotate-admin`` replaces the admin
token of the running hub: the old one is a 401 at once and the hub restarts with the new one.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hub.client import OperatorClient
from nexus_tools.processes import free_port
from nexus_wire.datadir import HubDataDir
from tests.support.hub import enroll_node
from tests.support.processes import NEXUS, HubProcess

HEARTBEAT = "/v1/nodes/me/heartbeat"


class Hub:
    """The hub process, with what enrolling needs of it (tests.support.hub.HubClients)."""

    def __init__(self, process: HubProcess) -> None:
        self.process = process
        self.url = process.url
        self.data_dir = process.data_dir
        self.http = httpx.Client(base_url=process.url, timeout=10)
        self.admin = OperatorClient(process.url, self.token())

    def token(self) -> str:
        return HubDataDir(self.data_dir).admin_token.read_text().strip()

    def close(self) -> None:
        self.http.close()
        self.admin.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    process = HubProcess(tmp_path / "hub", free_port(), "--no-superlink")
    running = Hub(process)
    try:
        yield running
    finally:
        running.close()
        running.process.stop()  # a test may have restarted it: stop the one running now


def _nexus(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*NEXUS, "hub", *args, "--hub", hub.url, "--data-dir", str(hub.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done


def _login(hub: Hub, token: str) -> httpx.Client:
    client = httpx.Client(base_url=hub.url, timeout=10)
    assert client.post("/dashboard/login", data={"token": token}).status_code == 303
    return client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, html[:500]
    return match.group(1)


def test_a_revoked_node_gets_401_and_shows_revoked(hub: Hub) -> None:
    node, other = enroll_node(hub, region="3"), enroll_node(hub)
    assert hub.http.post(HEARTBEAT, json={"health": "ok"}, headers=node.auth).status_code == 200
    _nexus(hub, "nodes", "revoke", node.node_id)
    refused = hub.http.post(HEARTBEAT, json={"health": "ok"}, headers=node.auth)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert hub.http.get("/v1/nodes/me/assignments", headers=node.auth).status_code == 401
    # a revoked node that keeps polling is not guessing: no 429, and the address stays usable
    for _ in range(15):
        assert hub.http.post(HEARTBEAT, json={"health": "ok"}, headers=node.auth).status_code == 401
    assert hub.http.post(HEARTBEAT, json={"health": "ok"}, headers=other.auth).status_code == 200
    views = {n["node_id"]: n for n in hub.admin.nodes()}
    assert views[node.node_id]["status"] == "revoked" and views[node.node_id]["revoked_at"] is not None
    assert views[other.node_id]["status"] == "online" and views[other.node_id]["revoked_at"] is None
    listed = _nexus(hub, "nodes", "list").stdout
    assert node.node_id in listed and "revoked" in listed
    unknown = hub.http.post("/v1/nodes/n-nope/revoke", headers={"Authorization": f"Bearer {hub.token()}"})
    assert unknown.status_code == 404 and "n-nope" in unknown.json()["error"]


def test_a_cookie_after_logout_is_refused(hub: Hub) -> None:
    client = _login(hub, hub.token())
    cookie = client.cookies["nexus_dashboard"]
    page = client.get("/dashboard/nodes")
    assert page.status_code == 200
    assert client.post("/dashboard/logout", data={"csrf": _csrf(page.text)}).status_code == 303
    # the browser drops the cookie; a copy of it (a stolen one) must not work either
    with httpx.Client(base_url=hub.url, timeout=10, cookies={"nexus_dashboard": cookie}) as replay:
        after = replay.get("/dashboard/nodes")
        assert after.status_code == 303 and after.headers["location"].endswith("/dashboard/login")
        assert replay.post("/dashboard/models/funnel/rollback", data={"csrf": _csrf(page.text)}).status_code == 401
    client.close()
    again = _login(hub, hub.token())  # a new login still works
    assert again.get("/dashboard/nodes").status_code == 200
    again.close()


def test_rotate_admin_refuses_the_old_token_and_survives_a_restart(hub: Hub) -> None:
    old = hub.token()
    session = _login(hub, old)
    node = enroll_node(hub)
    _nexus(hub, "token", "rotate-admin")
    new = hub.token()
    assert new != old and HubDataDir(hub.data_dir).admin_token.stat().st_mode & 0o777 == 0o600
    assert not HubDataDir(hub.data_dir).admin_token_next.exists()
    assert hub.http.get("/v1/nodes", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert hub.http.get("/v1/nodes", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert session.get("/dashboard/nodes").status_code == 303  # sessions were keyed by the old token
    session.close()
    assert hub.http.post(HEARTBEAT, json={"health": "ok"}, headers=node.auth).status_code == 200  # nodes unaffected
    # the hub starts again on its store with the new token (before: "belongs to another admin token")
    port = int(hub.url.rsplit(":", 1)[1])
    hub.process.stop()
    hub.process = HubProcess(hub.data_dir, port, "--no-superlink")
    assert hub.http.get("/v1/nodes", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert hub.http.get("/v1/nodes", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    client = _login(hub, new)
    assert client.get("/dashboard/nodes").status_code == 200
    client.close()
