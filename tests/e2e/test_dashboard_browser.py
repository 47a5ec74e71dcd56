"""The dashboard in a real browser: Playwright driving Debian's chromium against
``nexus hub serve`` with its Flower SuperLink and two ``nexus edge serve`` processes with
SuperNodes, all on 127.0.0.1. Log in, see the nodes, start a federated run, watch it
finish, promote its candidate with the button, see the edges report it, roll it back.
Screenshots (1366x768) go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_worker.store import LocalStore
from hub.client import OperatorClient
from models.bundle import DEFAULT_REPOSITORY, list_versions
from nexus_tools.processes import free_port
from nexus_wire.assignment import ASSIGNED
from tests.support.env import ROOT, need
from tests.support.hub import enroll_node
from tests.support.processes import EdgeProcess, HubProcess, wait_for
from tests.support.sessions import synthetic_sessions

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: two Flower rounds of train + evaluate; Flower polls every ~3 s (docs/federated.md)
RUN_BUDGET_MS = 240_000


class System:
    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        superlink = free_port()
        self.hub = HubProcess(
            root / "hub",
            free_port(),
            "--poll-interval",
            "0.5",
            "--offline-after",
            "10",
            "--superlink-port",
            str(superlink),
        )
        self.token = (root / "hub" / "admin.token").read_text().strip()
        self.admin = OperatorClient(self.hub.url, self.token)
        self.http = httpx.Client(base_url=self.hub.url)  # anonymous, as a node enrolling
        self.base = list_versions(DEFAULT_REPOSITORY, "funnel")[-1]
        pushed = self.admin.push(DEFAULT_REPOSITORY / "funnel" / self.base)
        self.stable = pushed["version"]
        self.admin.promote("funnel", self.stable, "stable")
        monkeypatch.setenv(
            "NEXUS_SUPERLINK", f"127.0.0.1:{superlink}"
        )  # the edges' SuperNodes join the hub's SuperLink
        self.edges: list[EdgeProcess] = []
        for region in (1, 2):
            store = LocalStore(root / f"edge-{region}" / "data")  # labelled sessions the ClientApp trains on
            for session, label in zip(*synthetic_sessions(200, seed=region, region=region)):
                store.add_outcome(session, bool(label))
            store.close()
            token = self.admin.create_token({"region": str(region)})["token"]
            self.edges.append(EdgeProcess(root / f"edge-{region}", self.hub.url, token))

    def stop(self) -> None:
        for edge in self.edges:
            edge.stop()
        self.http.close()
        self.admin.close()
        self.hub.stop()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    need(CHROMIUM.exists(), f"{CHROMIUM} is missing (Debian's chromium package)")
    need((Path(sys.executable).parent / "flower-superlink").exists(), "Flower's binaries are not installed")
    with pytest.MonkeyPatch.context() as monkeypatch:
        running = System(tmp_path_factory.mktemp("dashboard"), monkeypatch)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def page(system: System) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=system.hub.url)
        tab = context.new_page()
        tab.problems = []  # console errors and CSP violations: the pages must have none
        tab.on("console", lambda msg: msg.type == "error" and tab.problems.append(msg.text))
        tab.on("pageerror", lambda exc: tab.problems.append(str(exc)))
        tab.on("dialog", lambda dialog: dialog.accept())  # the confirm() of promote and roll back
        yield tab
        browser.close()


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _reload_until(page: Any, text: str, timeout_s: float, what: str, times: int = 1) -> None:
    def seen() -> bool:
        page.reload()
        return page.inner_text("main").count(text) >= times

    wait_for(seen, timeout=timeout_s, what=what)


def test_login_then_the_nodes_page_shows_both_edges(page: Any, system: System) -> None:
    page.goto("/dashboard/nodes")
    assert page.url.endswith("/dashboard/login")  # no session: the login form
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    assert "not this hub's admin token" in page.inner_text("main")
    page.problems.clear()  # the browser logs that 401 as a failed load
    page.get_by_label("Admin token").fill(system.token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard/nodes")

    _reload_until(page, "2 of 2 nodes online", 60, "both edges online")
    _reload_until(page, f"funnel v{system.stable}", 60, "the edges reporting the stable version", times=2)
    rows = page.locator("tbody tr")
    assert rows.count() == 2
    assert {"region=1", "region=2"} <= {t.strip() for t in page.locator("tbody .tag").all_inner_texts()}
    _shot(page, "nodes")
    assert page.problems == []


def test_start_a_round_watch_it_finish_promote_and_roll_back(page: Any, system: System) -> None:
    page.get_by_role("link", name="Rounds").click()
    page.get_by_label("Model").select_option("funnel")
    page.get_by_label("Rounds").fill("2")
    page.get_by_label("Minimum nodes").fill("2")
    page.get_by_role("button", name="Start run").click()
    assert "Started funnel run" in page.locator(".flash").inner_text()
    _shot(page, "rounds-running")

    # the section refreshes itself (fetch() every 3 s) until the watcher registers the candidate
    page.locator("#runs .badge", has_text="finished").first.wait_for(timeout=RUN_BUDGET_MS)
    run = system.admin.runs()[0]
    assert run["status"] == "finished" and run["rounds_done"] == 2 and len(run["participants"]) == 2
    candidate = run["version"]
    page.locator("#runs canvas").first.wait_for()
    assert "2 / 2 rounds" in page.inner_text("#runs")
    _shot(page, "rounds-finished")

    page.get_by_role("link", name="Models").click()
    page.get_by_role("button", name=f"Promote funnel v{candidate} to stable").click()
    assert f"funnel v{candidate} promoted to stable" in page.locator(".flash").inner_text()
    assert system.admin.show("funnel")["stable"] == candidate
    _shot(page, "models")

    page.get_by_role("link", name="Nodes").click()
    _reload_until(page, f"funnel v{candidate}", 60, "both edges reporting the new version", times=2)
    assert all(e.served() == candidate for e in system.edges)
    assert "2 of 2 nodes online" in page.inner_text("main")
    _shot(page, "nodes-after-promote")

    page.get_by_role("link", name="Models").click()
    page.get_by_role("button", name="Roll back funnel").click()
    assert f"rolled back the stable of v{candidate}" in page.locator(".flash").inner_text()
    assert system.admin.show("funnel")["stable"] == system.stable
    wait_for(
        lambda: all(e.served() == system.stable for e in system.edges),
        timeout=60,
        what="both edges back on the old version",
    )
    assert page.problems == []


def test_funnels_and_privacy_pages_with_real_counts(page: Any, system: System) -> None:
    admin = {"Authorization": f"Bearer {system.token}"}
    http = httpx.Client(base_url=system.hub.url, headers=admin)
    assert http.post("/v1/funnels", json={"id": "shop", "steps": ["view", "cart", "buy"]}).status_code == 201
    experiment = {
        "id": "checkout-test",
        "funnel_id": "shop",
        "variants": [{"name": "A", "weight": 1}, {"name": "B", "weight": 1}],
        "decision_step": "buy",
        "allocation": "thompson",
    }
    assert http.post("/v1/experiments", json=experiment).status_code == 201
    assert http.post("/v1/experiments/checkout-test/start").status_code == 200
    # a simulated edge reports its counts through the node API
    node = enroll_node(system, region="9")
    counts = {
        ("A", ASSIGNED): 900,
        ("A", "view"): 900,
        ("A", "cart"): 270,
        ("A", "buy"): 90,
        ("B", ASSIGNED): 880,
        ("B", "view"): 880,
        ("B", "cart"): 310,
        ("B", "buy"): 123,
    }
    report = {
        "node_id": node.node_id,
        "counts": [
            {"experiment": "checkout-test", "variant": v, "step": s, "count": c} for (v, s), c in counts.items()
        ],
    }
    reply = httpx.post(
        system.hub.url + "/v1/nodes/me/counters",
        json=report,
        headers=node.auth,
    )
    assert reply.status_code == 200, reply.text
    http.close()

    page.get_by_role("link", name="Funnels").click()
    main = page.inner_text("main")
    assert "checkout-test" in main and "view → cart → buy" in main and "14.0%" in main  # B: 123/880
    page.locator("canvas#conv-checkout-test").wait_for()
    _shot(page, "funnels")

    page.get_by_role("link", name="Privacy").click()
    main = page.inner_text("main")
    assert all(n["node_id"] in main for n in system.admin.nodes())
    assert (
        main.count("intact") == len(system.edges) and "NOT intact" not in main
    )  # the real edges report their verified audit logs
    _shot(page, "privacy")
    assert page.problems == []
