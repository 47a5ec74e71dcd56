"""Attack 1 of issue 13, against real processes on loopback: a foreign Flower app.

The app (tests/support/foreign_app.py) is what an attacker would submit: its ServerApp reads
the hub's signing key named in ``NEXUS_RECEIPT_KEY``, its ClientApp reads the edge's local
store, and each leaves what it got in a marker file, the proof of whether any of its code ran.

Before: the SuperLink inherited the hub's ``--host`` and served its Control API (run
submission, which open-source Flower does not authenticate) on the port SuperNodes join, so
``flwr run`` with nothing but that address was accepted (with TLS and SuperNode
authentication too, given only the public CA certificate); the ServerApp ran as the hub's
user, the ClientApp on every edge, and the edges' audit logs said nothing.

Now: (a) the port SuperNodes join is the hub's Fleet gateway, which forwards the Fleet API
only: ``flwr run`` through it is refused, plain or with TLS; (b) an attacker on the hub's own
host reaching the loopback Control API gets a run accepted by Flower, but the hub's app guard
refuses its ServerApp (its FAB is not one the hub signed) and none of it runs; (c) an edge
whose SuperNode was pointed at a rogue stock SuperLink, where the foreign ServerApp does run
and sends its query, refuses the ClientApp before any of its code runs: the refusal is on
the edge's audit log with the run and the FAB digest, in ``nexus audit report``, and
``nexus audit verify`` still holds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_worker.audit import REFUSAL, AuditReader, Entry
from hub.apps import fab_sha256
from hub.client import OperatorClient
from hub.superlink import CONNECTION, SuperLink, SuperLinkConfig
from nexus_service.processes import end_process_tree, flower_env
from nexus_tools.processes import free_port
from nexus_wire.datadir import EdgeDataDir, HubDataDir
from nexus_wire.payloads import FLOWER_APP
from tests.support import foreign_app
from tests.support.env import ROOT, need
from tests.support.processes import NEXUS, EdgeProcess, HubProcess, wait_for

BIN = Path(sys.executable).parent
#: how long the foreign ServerApp waits for nodes and for their replies
APP_WAIT_S = 20


def _flwr(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), *args, "--format", "json"],
        env=flower_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _attacker_home(root: Path, address: str, ca: Path | None = None) -> Path:
    """A fresh FLWR_HOME that knows one SuperLink address, and for TLS only the public CA."""
    home = root / f"attacker-{address.replace(':', '-')}"
    home.mkdir(parents=True)
    trust = "insecure = true" if ca is None else f'root-certificates = "{ca}"'
    (home / "config.toml").write_text(f'[superlink.target]\naddress = "{address}"\n{trust}\n')
    return home


def _submit(home: Path, app: Path, marker: Path) -> subprocess.CompletedProcess[str]:
    config = f'marker-dir="{marker}" wait-s={APP_WAIT_S}'
    return _flwr(home, "run", str(app), "target", "--run-config", config)


def _accepted(done: subprocess.CompletedProcess[str]) -> int | None:
    """The run id Flower gave the submission, or None when it was refused."""
    try:
        answer = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        return None
    return int(answer["run-id"]) if answer.get("success") and answer.get("run-id") else None


def _hub_runs(hub: HubProcess) -> list[dict]:
    """Every run the hub's SuperLink holds, asked over the hub's own loopback connection."""
    return SuperLink(SuperLinkConfig(HubDataDir(hub.data_dir).superlink.root)).flwr("ls", CONNECTION)["runs"]


def _listening_on(port: int) -> set[str]:
    """The addresses a TCP socket listens on ``port`` at (Linux ``/proc/net/tcp``, IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add("127.0.0.1" if address == "0100007F" else address)
    return found


def _ran(marker: Path) -> list[str]:
    return sorted(p.name for p in marker.iterdir())


@pytest.fixture(scope="module")
def need_flower() -> None:
    need(
        (BIN / "flower-superlink").exists() and (BIN / "flower-supernode").exists(),
        "Flower's binaries are not installed in this environment",
    )


class Hub(HubProcess):
    """``nexus hub serve`` with its SuperLink; ``gateway``: the address SuperNodes are told."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.gateway_port = free_port()
        super().__init__(data_dir, free_port(), "--superlink-port", str(self.gateway_port), *extra)
        wait_for(lambda: HubDataDir(data_dir).superlink.guard_pid.exists(), 30, "the hub's app guard")

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, need_flower: None) -> Iterator[Hub]:
    process = Hub(tmp_path_factory.mktemp("foreign-app") / "hub", "--poll-interval", "0.5")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return foreign_app.write(tmp_path / "mallory-app")


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    folder = tmp_path / "marker"
    folder.mkdir()
    return folder


def test_a_run_is_refused_through_the_port_supernodes_join(hub: Hub, app: Path, marker: Path) -> None:
    home = _attacker_home(marker.parent, hub.gateway)
    done = _submit(home, app, marker)
    assert _accepted(done) is None, done.stdout
    assert "404" in done.stdout + done.stderr  # the gateway's answer to /v1/control/start-run
    listing = _flwr(home, "ls", "target")
    assert '"success": true' not in listing.stdout
    assert _hub_runs(hub) == [] and _ran(marker) == []
    # and the SuperLink's own port is bound to loopback only
    internal = int(HubDataDir(hub.data_dir).superlink.address.read_text().rsplit(":", 1)[1])
    assert _listening_on(internal) == {"127.0.0.1"}


@pytest.mark.slow
def test_a_run_is_refused_through_a_tls_gateway_with_supernode_auth_given_the_ca(
    tmp_path: Path, app: Path, marker: Path, need_flower: None
) -> None:
    """The deploy configuration: TLS and SuperNode authentication, the CA certificate public."""
    need(shutil.which("openssl") is not None and shutil.which("ssh-keygen") is not None, "openssl, ssh-keygen")
    keys = tmp_path / "keys"
    subprocess.run(
        [str(ROOT / "deploy" / "flower" / "gen-certs.sh"), "--out", str(keys), "--regions", "1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls = [
        f"--superlink-ssl-ca-certfile={keys / 'ca.crt'}",
        f"--superlink-ssl-certfile={keys / 'server.pem'}",
        f"--superlink-ssl-keyfile={keys / 'server.key'}",
    ]
    hub = Hub(tmp_path / "hub", *tls, "--superlink-supernode-auth")
    try:
        home = _attacker_home(tmp_path, f"localhost:{hub.gateway_port}", keys / "ca.crt")
        done = _submit(home, app, marker)
        assert _accepted(done) is None, done.stdout
        assert "404" in done.stdout + done.stderr
        # the hub itself still reaches its SuperLink, over TLS on loopback
        assert _hub_runs(hub) == [] and _ran(marker) == []
    finally:
        hub.stop()


def test_a_run_on_the_loopback_control_api_never_runs_its_server_app(hub: Hub, app: Path, marker: Path) -> None:
    layout = HubDataDir(hub.data_dir).superlink
    home = _attacker_home(marker.parent, layout.address.read_text().strip())  # an attacker on the hub host
    done = _submit(home, app, marker)
    run_id = _accepted(done)
    assert run_id is not None, done.stdout + done.stderr  # Flower itself authenticates nobody here
    link = SuperLink(SuperLinkConfig(layout.root))
    wait_for(lambda: link.run_status(run_id).startswith("finished"), 60, "Flower to end the refused run")
    assert link.run_status(run_id) == "finished:failed"
    time.sleep(2)  # a ServerApp launched anyway would have written its marker by now
    assert _ran(marker) == [], "the foreign ServerApp ran on the hub"
    guard_log = layout.guard_log.read_text()
    assert f"of run {run_id}" in guard_log and "is not signed by hub key" in guard_log


class RogueEdge(EdgeProcess):
    """An edge whose SuperNode was pointed at a SuperLink that is not its hub's."""

    rogue = ""

    @property
    def extra_args(self) -> tuple[str, ...]:  # type: ignore[override]  # a property here, a tuple there
        return ("--superlink", self.rogue)


def _online(home: Path) -> int:
    listing = _flwr(home, "supernode", "ls", "target").stdout
    return sum(n.get("status") == "online" for n in json.loads(listing or "{}").get("nodes", []))


def _app_refusals(data_dir: Path) -> list[Entry]:
    return [e for e in AuditReader(data_dir).entries(REFUSAL) if e.kind == FLOWER_APP]


@pytest.mark.slow
def test_an_edge_refuses_a_foreign_client_app_from_a_rogue_superlink(
    hub: Hub, app: Path, marker: Path, tmp_path: Path
) -> None:
    port = free_port()
    rogue_home = tmp_path / "rogue-home"
    rogue_home.mkdir()
    with open(tmp_path / "rogue.log", "wb") as log:
        rogue = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env=flower_env(rogue_home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    admin = OperatorClient(hub.url, HubDataDir(hub.data_dir).admin_token.read_text().strip())
    edge = None
    try:
        RogueEdge.rogue = f"127.0.0.1:{port}"
        edge = RogueEdge(tmp_path / "edge", hub.url, admin.create_token({"region": "1"})["token"])
        data = edge.root / "data"
        home = _attacker_home(tmp_path, RogueEdge.rogue)
        wait_for(lambda: _online(home) == 1, 90, "the edge's SuperNode on the rogue SuperLink")
        run_id = _accepted(_submit(home, app, marker))
        assert run_id is not None
        wait_for(lambda: bool(_app_refusals(data)), 90, "the edge's guard to refuse the ClientApp")
        wait_for(lambda: (marker / foreign_app.SERVER_REPLIES).exists(), APP_WAIT_S + 60, "the ServerApp to give up")
        # the rogue ran its ServerApp and asked; the edge ran none of the ClientApp and sent nothing
        assert _ran(marker) == [foreign_app.SERVER_RAN, foreign_app.SERVER_REPLIES]
        assert json.loads((marker / foreign_app.SERVER_REPLIES).read_text()) == []

        (refusal,) = _app_refusals(data)[:1]
        assert refusal.summary["run"] == run_id and refusal.summary["fab_sha256"] == fab_sha256(app)
        assert "is not signed by hub key" in (refusal.reason or "")
        edge.stop()  # its SuperNode and guard with it: the audit log is read while nobody writes it
        officer = ["--data-dir", str(data)]
        report = subprocess.run([*NEXUS, "audit", "report", *officer], capture_output=True, text=True, timeout=60)
        refused = json.loads(report.stdout)["refused_apps"]
        assert refused["count"] >= 1 and refused["fabs"] == [fab_sha256(app)]
        assert refused["recent"][0]["run"] == run_id
        verify = subprocess.run([*NEXUS, "audit", "verify", *officer], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert EdgeDataDir(data).trusted_apps.exists()  # it held the hub's list, which names another FAB
    finally:
        if edge is not None:
            edge.stop()
        admin.close()
        end_process_tree(rogue.pid)
