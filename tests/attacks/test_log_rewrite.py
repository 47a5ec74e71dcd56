"""Attack 3 of issue 13, against a real ``nexus hub serve`` and a real ``nexus edge serve`` on
loopback: rewrite the edge's audit log and grow it past the head the hub holds.

Before: the hub kept the largest head a node reported and flagged only a shorter log or
another root at the same size, so a log with an old entry changed, every head re-signed with
the node's own key and more entries appended than the hub held passed the hub unnoticed (and
the edge's own verification, which checks the log against itself). Now every heartbeat
carries an RFC 6962 consistency proof from the head the hub holds; the hub takes a larger
head only with a proof that verifies and records a sticky ``inconsistent`` regression for one
that does not (hub log, ``GET /v1/nodes``, ``nexus hub nodes list``, dashboard), and ``nexus
audit verify --head`` on the held head checks the same proof and fails.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_worker.audit import AuditLog, AuditReader, verify
from hub.client import OperatorClient
from nexus_tools.processes import free_port
from tests.support.audit import rewrite
from tests.support.processes import NEXUS, EdgeProcess, HubProcess, wait_for

pytestmark = pytest.mark.slow


class Link:
    """A real hub and one real edge enrolled with it, and what the hub says about the edge."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub = HubProcess(root / "hub", free_port(), "--no-superlink", "--poll-interval", "0.5")
        self.token = (root / "hub" / "admin.token").read_text().strip()
        self.admin = OperatorClient(self.hub.url, self.token)
        self.edge = EdgeProcess(root / "edge", self.hub.url, self.admin.create_token({"region": "1"})["token"])
        self.data_dir = self.edge.root / "data"

    def beat(self) -> dict[str, Any]:
        nodes = self.admin.nodes()
        return (nodes[0]["heartbeat"] or {}) if nodes else {}

    def held_size(self) -> int:
        return int((self.beat().get("audit_largest_head") or {}).get("size", 0))

    def close(self) -> None:
        self.edge.stop()
        self.admin.close()
        self.hub.stop()


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    running = Link(tmp_path)
    try:
        yield running
    finally:
        running.close()


def _verify_against(data_dir: Path, head: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(head))
    return subprocess.run(
        [*NEXUS, "audit", "verify", "--data-dir", str(data_dir), "--head", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_rewritten_and_grown_log_is_flagged_inconsistent(link: Link, tmp_path: Path) -> None:
    wait_for(lambda: link.held_size() >= 8, timeout=90, what="the hub holding a proven head of 8+")
    held = link.beat()["audit_largest_head"]
    proc = _verify_against(link.data_dir, held, tmp_path / "held.json")
    assert proc.returncode == 0, proc.stderr

    link.edge.stop()
    # an old entry changed, every head from it re-signed with the node's own key
    rewrite(link.data_dir, 2, destination="http://elsewhere.example", bytes=0)
    with AuditLog(link.data_dir) as log:  # and grown well past the head the hub holds
        for i in range(held["size"]):
            log.record_send("sync", link.hub.url, "heartbeat", b"later %d" % i, {"health": "ok"})
    assert verify(link.data_dir).ok  # on its own, the log is intact
    grown = AuditReader(link.data_dir).tree_head()
    assert grown is not None and grown.size > held["size"]

    link.edge.start(None)  # same data dir: same identity and node key
    wait_for(
        lambda: (
            (link.beat().get("audit_regression") or {}).get("kind") == "inconsistent"
            and link.beat().get("audit_ok") is True
        ),
        timeout=90,
        what="the hub flagging the rewritten log while the edge's own verification passes",
    )
    regression = link.beat()["audit_regression"]
    assert regression["was"]["size"] >= held["size"] and regression["now"]["size"] > regression["was"]["size"]
    assert link.held_size() == regression["was"]["size"]  # the rewritten heads were never taken
    assert "audit log rewritten" in link.hub.log.read_text()
    assert "the log changed since the hub saw it" in (link.edge.root / "edge.log").read_text()

    # the officer, with the head the hub held (and the one held before): not consistent
    for name, head in (("was.json", regression["was"]), ("held.json", held)):
        proc = _verify_against(link.data_dir, head, tmp_path / name)
        assert proc.returncode == 1 and "the log is not consistent with the tree head held elsewhere" in proc.stderr

    # sticky while the log keeps growing, on every surface
    now = regression["now"]["size"]
    wait_for(lambda: link.beat()["audit_head"]["size"] > now, timeout=60, what="more heartbeats")
    assert link.beat()["audit_regression"] == regression
    code = subprocess.run(
        [*NEXUS, "hub", "nodes", "list", "--hub", link.hub.url, "--token", link.token],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert code.returncode == 0 and "INCONSISTENT: audit log rewritten" in code.stdout, code.stderr
    with httpx.Client(base_url=link.hub.url) as page:
        assert page.post("/dashboard/login", data={"token": link.token}).status_code == 303
        assert "audit inconsistent" in page.get("/dashboard/privacy").text


def test_an_untouched_growing_log_is_held_at_each_proven_head(link: Link, tmp_path: Path) -> None:
    sizes: set[int] = set()

    def advanced(count: int) -> bool:
        sizes.add(link.held_size())
        return len(sizes - {0}) >= count

    wait_for(lambda: advanced(3), timeout=90, what="the hub holding three successive heads")
    link.edge.stop()
    before = link.held_size()
    link.edge.start(None)  # a restart: the first heartbeat has no proof, the next one does
    wait_for(lambda: link.held_size() > before, timeout=90, what="the held head moving on after a restart")
    beat = link.beat()
    assert beat["audit_regression"] is None
    proc = _verify_against(link.data_dir, beat["audit_largest_head"], tmp_path / "held.json")
    assert proc.returncode == 0, proc.stderr
