"""Flower's own CLI reading a live hub's runs through its Fleet gateway (issue 16, "Flower
tooling"), without reopening the Control API (issue 13): a real ``nexus hub serve`` with its
SuperLink, a run it started (waiting for nodes that never come), ``nexus hub flower-login``
and the real ``flwr``. With the admin token ``flwr ls`` / ``flwr log`` / ``flwr supernode ls``
work; without it ``flwr ls`` gets nothing; ``flwr run`` is refused even with it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.client import OperatorClient
from hub.flower_login import write_login
from hub.superlink import flower_app_dir
from models.bundle import DEFAULT_REPOSITORY
from nexus_service.processes import flower_env
from nexus_tools.processes import free_port
from tests.support.env import need
from tests.support.processes import NEXUS, HubProcess

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _flwr(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=flower_env(home), capture_output=True, text=True, timeout=120, check=False
    )


def _json(done: subprocess.CompletedProcess[str]) -> dict:
    try:
        return dict(json.loads(done.stdout[done.stdout.index("{") :]))
    except ValueError:
        return {}


class Hub(HubProcess):
    def __init__(self, data_dir: Path) -> None:
        self.gateway_port = free_port()
        super().__init__(data_dir, free_port(), "--superlink-port", str(self.gateway_port))
        self.admin = OperatorClient(self.url, (data_dir / "admin.token").read_text().strip(), timeout=90)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    need((BIN / "flower-superlink").exists(), "Flower's binaries are not installed in this environment")
    process = Hub(tmp_path / "hub")
    try:
        yield process
    finally:
        process.admin.close()
        process.stop()


def test_flwr_reads_the_hubs_runs_with_the_admin_token_and_nothing_more(hub: Hub, tmp_path: Path) -> None:
    hub.admin.push(DEFAULT_REPOSITORY / "funnel" / "1")
    run = hub.admin.start_run({"model": "funnel", "rounds": 1, "min_nodes": 3, "deadline_s": 600})
    assert run["status"] == "running" and run["flower_run_id"] is not None
    flower_run = int(run["flower_run_id"])

    home = tmp_path / "operator"
    login = subprocess.run(
        [*NEXUS, "hub", "flower-login", "--flwr-home", str(home), "--superlink", f"127.0.0.1:{hub.gateway_port}",
         "--data-dir", str(hub.data_dir), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr[-2000:]
    assert json.loads(login.stdout)["address"] == f"127.0.0.1:{hub.gateway_port}"

    listed = _flwr(home, "ls", "hub", "--format", "json")
    runs = {int(r["run-id"]): r for r in _json(listed).get("runs", [])}
    assert flower_run in runs, listed.stdout + listed.stderr
    listed_run = runs[flower_run]
    assert listed_run["fab-name"] == "nexus-federated" and listed_run["status"] in ("starting", "running"), listed_run
    assert set(listed_run["network-traffic"]) == {"inbound-bytes", "outbound-bytes", "total-bytes"}
    logs = _flwr(home, "log", str(flower_run), "hub", "--show")
    assert logs.returncode == 0, logs.stdout + logs.stderr
    nodes = _flwr(home, "supernode", "ls", "hub", "--format", "json")
    assert _json(nodes).get("success") is True, nodes.stdout + nodes.stderr

    # with the admin token, still no run submission: StartRun is not on the gateway's list
    submitted = _flwr(home, "run", str(flower_app_dir()), "hub", "--format", "json")
    answer = _json(submitted)
    assert answer.get("success") is False and not answer.get("run-id"), submitted.stdout
    assert "404" in answer.get("error-message", "") + submitted.stdout
    assert [r["flower_run_id"] for r in hub.admin.runs()] == [run["flower_run_id"]]

    # the address alone, no token: nothing
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    address = f"127.0.0.1:{hub.gateway_port}"
    (stranger / "config.toml").write_text(f'[superlink.hub]\naddress = "{address}"\ninsecure = true\n')
    # ... or a wrong token: the same 404 as a path the gateway does not know
    guesser = tmp_path / "guesser"
    write_login(guesser, address, "not-the-admin-token")
    for home in (stranger, guesser):
        refused = _json(_flwr(home, "ls", "hub", "--format", "json"))
        assert refused.get("success") is False and "runs" not in refused, refused
        assert "404 Not Found" in refused["error-message"], refused

    assert hub.admin.stop_run(run["run_id"])["status"] == "stopped"
