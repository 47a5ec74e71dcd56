"""The run deadline and ``nexus hub rounds stop`` against live Flower runs: a real
``nexus hub serve`` with its own SuperLink on loopback and no SuperNode at all, so a run
asking for ``--min-nodes 3`` waits forever inside Flower (the case the deadline exists
for). The hub must end both runs in its store *and* in the SuperLink (Flower's own status
``finished:stopped``), and keep accepting runs afterwards."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hub.client import OperatorClient
from hub.superlink import SuperLink, SuperLinkConfig
from models.bundle import DEFAULT_REPOSITORY
from nexus_tools.processes import free_port
from tests.support.env import need
from tests.support.federated import flower_finished
from tests.support.processes import NEXUS, HubProcess, wait_for

BIN = Path(__import__("sys").executable).parent
#: short, but long enough for `flwr run` to hand the run to Flower first on a busy box
DEADLINE_S = 8.0
#: how late the hub may end it: a watcher tick, `flwr supernode ls` (a Python process) and
#: whatever `flwr ls` the tick was running for another run, on a loaded 2-core box
DEADLINE_SLACK_S = 30.0


class LiveHub:
    def __init__(self, root: Path) -> None:
        self.superlink_port = free_port()
        self.process = HubProcess(root / "hub", free_port(), "--superlink-port", str(self.superlink_port))
        self.token = (root / "hub" / "admin.token").read_text().strip()
        self.admin = OperatorClient(self.process.url, self.token)
        # the hub's own `flwr` connection (its SuperLink's Control API listens on loopback only,
        # never on --superlink-port), to ask Flower what it thinks
        self.link = SuperLink(SuperLinkConfig(root / "hub" / "flower"))

    def nexus(self, *args: str) -> dict:
        done = subprocess.run(
            [*NEXUS, "hub", "rounds", *args, "--json",
             "--hub", self.process.url, "--data-dir", str(self.process.data_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    def start(self, *args: str) -> dict:
        return self.nexus("start", "--model", "funnel", "--rounds", "1", "--min-nodes", "3", *args)

    def flower_finished(self, flower_run_id: int, timeout: float) -> str:
        return flower_finished(self.link, flower_run_id, timeout, f"hub log {self.process.log}")

    def close(self) -> None:
        self.admin.close()
        self.process.stop()


@pytest.fixture
def live_hub(tmp_path: Path) -> Iterator[LiveHub]:
    need((BIN / "flower-superlink").exists(), "Flower's binaries are not installed in this environment")
    hub = LiveHub(tmp_path)
    try:
        hub.admin.push(DEFAULT_REPOSITORY / "funnel" / "1")
        yield hub
    finally:
        hub.close()


def test_deadline_and_stop_end_waiting_flower_runs(live_hub: LiveHub) -> None:
    hub = live_hub
    assert hub.link.online_nodes() == []  # nobody to train: Flower would wait forever

    late = hub.start("--deadline", str(DEADLINE_S))
    # "failed" already when the deadline passed while `flwr run` was submitting it (a loaded box)
    assert late["status"] in ("running", "failed") and late["flower_run_id"] is not None
    assert late["config"]["deadline_s"] == DEADLINE_S and late["config"]["min_nodes"] == 3

    # meanwhile a second waiting run, stopped by the operator
    waiting = hub.start("--deadline", "600")
    assert waiting["status"] == "running" and waiting["flower_run_id"] != late["flower_run_id"]
    stopped = hub.nexus("stop", waiting["run_id"])
    assert stopped["status"] == "stopped" and stopped["reason"] == "stopped by the operator"
    assert hub.flower_finished(waiting["flower_run_id"], timeout=30) == "finished:stopped"

    # stopped while the hub is still submitting it (`flwr run` takes seconds): once Flower
    # has accepted it, the hub must stop it there too rather than mark it running again
    with ThreadPoolExecutor(1) as pool, OperatorClient(hub.process.url, hub.token, timeout=90) as other:
        submitting = pool.submit(other.start_run, {"model": "funnel", "rounds": 1, "min_nodes": 3})
        wait_for(lambda: len(hub.admin.runs()) == 3, timeout=10, what="the third run recorded")
        raced = hub.admin.runs()[0]
        assert raced["status"] == "starting" and raced["flower_run_id"] is None
        assert hub.admin.stop_run(raced["run_id"])["status"] == "stopped"
        answered = submitting.result(timeout=60)
    assert (
        answered["run_id"] == raced["run_id"]
        and answered["status"] == "stopped"
        and answered["flower_run_id"] is not None
    )
    assert hub.flower_finished(answered["flower_run_id"], timeout=30) == "finished:stopped"
    assert hub.admin.run(raced["run_id"])["status"] == "stopped"

    wait_for(
        lambda: hub.admin.run(late["run_id"])["status"] != "running",
        timeout=DEADLINE_S + 2 * DEADLINE_SLACK_S,
        what="the deadline to end the run",
    )
    failed = hub.nexus("show", late["run_id"])
    assert failed["status"] == "failed", failed
    assert failed["reason"].startswith(f"deadline of {DEADLINE_S:.0f}s passed after 0/1 rounds; 0 node(s) online"), (
        failed["reason"]
    )
    assert failed["rounds"] == [] and failed["deadline_at"] - failed["created_at"] == pytest.approx(DEADLINE_S)
    assert 0 < failed["updated_at"] - failed["deadline_at"] < DEADLINE_SLACK_S
    assert hub.flower_finished(late["flower_run_id"], timeout=30) == "finished:stopped"

    # the hub still serves and takes a new run; ending it again leaves nothing active
    again = hub.start("--deadline", "600")
    assert again["status"] == "running"
    assert hub.nexus("stop", again["run_id"])["status"] == "stopped"
    assert hub.flower_finished(again["flower_run_id"], timeout=30) == "finished:stopped"
    runs = hub.nexus("list")
    assert [r["run_id"] for r in runs] == [again["run_id"], raced["run_id"], waiting["run_id"], late["run_id"]]
    assert [r["status"] for r in runs] == ["stopped", "stopped", "stopped", "failed"]
