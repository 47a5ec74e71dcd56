"""Issue 14, rate limits, against a real ``nexus hub serve`` on loopback.

Before: 200 wrong dashboard logins took 0.4 s with no slowdown (about 500 guesses a second),
enrollment with made-up tokens ran at about 800 a second. Now each client address may make
``--auth-failure-limit`` wrong credentials (default 10 at once, then 0.5 a second; the API's
bearer tokens and the dashboard login share the bucket) and ``--enroll-failure-limit`` failed
enrollments (default 20, then 1 a second); beyond that the hub answers 429 with
``Retry-After`` before looking at the credential. Other addresses are not affected: each test
speaks from its own loopback address (127.0.0.0/8 is all on ``lo``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nexus_tools.processes import free_port
from nexus_wire.datadir import HubDataDir
from tests.support.processes import HubProcess

ATTEMPTS = 50


class Hub:
    def __init__(self, process: HubProcess) -> None:
        self.process = process
        self.url = process.url
        self.token = HubDataDir(process.data_dir).admin_token.read_text().strip()

    def client(self, address: str) -> httpx.Client:
        """A client whose connections come from ``address``."""
        return httpx.Client(
            base_url=self.url, timeout=10, transport=httpx.HTTPTransport(local_address=address), follow_redirects=False
        )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root: Path = tmp_path_factory.mktemp("rate-limits")
    process = HubProcess(root / "hub", free_port(), "--no-superlink")
    try:
        yield Hub(process)
    finally:
        process.stop()


def _flood(send: object, attempts: int = ATTEMPTS) -> tuple[Counter[int], list[httpx.Response], float]:
    assert callable(send)
    started = time.monotonic()
    replies = [send() for _ in range(attempts)]
    return Counter(r.status_code for r in replies), replies, time.monotonic() - started


def test_wrong_dashboard_logins_get_429_after_the_burst(hub: Hub) -> None:
    with hub.client("127.0.0.2") as attacker, hub.client("127.0.0.3") as operator:
        statuses, replies, took = _flood(lambda: attacker.post("/dashboard/login", data={"token": "nx_guess"}))
        # the default burst, then what the refill (0.5 a second) gave back during the flood
        assert 10 <= statuses[401] <= 10 + took * 0.5 and statuses[429] == ATTEMPTS - statuses[401], (statuses, took)
        refused = replies[-1]
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 2
        assert "too many wrong credentials" in refused.text
        # the right token from the limited address is refused too: it is not looked at
        assert attacker.post("/dashboard/login", data={"token": hub.token}).status_code == 429
        # ... and from another address it works
        login = operator.post("/dashboard/login", data={"token": hub.token})
        assert login.status_code == 303 and "nexus_dashboard" in login.cookies
        # after Retry-After the address has one guess again, then it is 429 again
        time.sleep(int(refused.headers["Retry-After"]))
        assert attacker.post("/dashboard/login", data={"token": "nx_guess"}).status_code == 401
        assert attacker.post("/dashboard/login", data={"token": "nx_guess"}).status_code == 429
    print(f"\n{ATTEMPTS} wrong logins in {took:.2f} s: {statuses[401]} checked, {statuses[429]} answered 429")


def test_wrong_bearer_tokens_share_the_limit_and_spare_the_right_ones(hub: Hub) -> None:
    with hub.client("127.0.0.4") as attacker, hub.client("127.0.0.5") as operator:
        wrong = {"Authorization": "Bearer nx_guess"}
        statuses, replies, took = _flood(lambda: attacker.get("/v1/nodes", headers=wrong))
        assert 10 <= statuses[401] <= 10 + took * 0.5 and statuses[429] == ATTEMPTS - statuses[401], statuses
        assert replies[-1].headers["Retry-After"] and replies[-1].json()["error"].startswith("too many")
        # the dashboard login is the same guess at the admin token: the same bucket
        assert attacker.post("/dashboard/login", data={"token": "nx_guess"}).status_code == 429
        right = {"Authorization": f"Bearer {hub.token}"}
        assert operator.get("/v1/nodes", headers=right).status_code == 200
        # no credential at all guesses nothing: still a 401, never a 429
        for _ in range(20):
            assert operator.get("/v1/nodes").status_code == 401
        assert operator.get("/v1/nodes", headers=right).status_code == 200


def test_enrollment_flood_gets_429(hub: Hub) -> None:
    with hub.client("127.0.0.6") as attacker, hub.client("127.0.0.7") as edge:
        statuses, replies, took = _flood(
            lambda: attacker.post("/v1/enroll", json={"token": "nx_made_up_token"}), attempts=100
        )
        assert 20 <= statuses[401] <= 20 + took and statuses[429] == 100 - statuses[401], (statuses, took)
        assert int(replies[-1].headers["Retry-After"]) == 1
        # an edge with a real token, from another address, enrolls
        token = httpx.post(
            f"{hub.url}/v1/tokens", json={"tags": {}}, headers={"Authorization": f"Bearer {hub.token}"}
        ).json()["token"]
        assert edge.post("/v1/enroll", json={"token": token}).status_code == 201
    print(f"\n100 bad enrollments in {took:.2f} s: {statuses[401]} checked, {statuses[429]} answered 429")
