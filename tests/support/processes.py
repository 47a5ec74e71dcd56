"""Real child processes of the system (``nexus hub serve``, ``nexus edge serve``) and waiting on them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from hub.client import OperatorClient
from models.bundle import DEFAULT_REPOSITORY
from nexus_service.processes import end_process_tree
from nexus_tools.processes import free_port
from tests.support.env import need
from tests.support.metrics import parse

NEXUS = [sys.executable, "-m", "nexus_cli"]
BIN = Path(sys.executable).parent


def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


class HubProcess:
    """``nexus hub serve`` as a real child process."""

    def __init__(self, data_dir: Path, port: int, *extra: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.log = data_dir.parent / f"hub-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*NEXUS, "hub", "serve", "--data-dir", str(data_dir), "--port", str(port), *extra],
                stdout=log,
                stderr=log,
            )
        try:
            wait_for(lambda: _healthy(self.url) or self.proc.poll() is not None, timeout=30, what="hub start")
            assert self.proc.poll() is None, self.log.read_text()
        except AssertionError:
            self.stop()  # no fixture tears down an object that was never made: leave no SuperLink running
            raise

    def kill(self) -> None:
        """SIGKILL, as a crash would: a SuperLink it started outlives it (the next hub adopts it)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """End the hub (SIGTERM stops its SuperLink) and any SuperLink a killed hub left behind."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            pid = int((self.data_dir / "flower" / "superlink.pid").read_text())
            if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes():  # pids get reused
                end_process_tree(pid, kill=True)
        except (OSError, ValueError):
            pass


class EdgeProcess:
    """``nexus edge serve`` as a real child process, enrolling with ``token`` at its hub."""

    models = "funnel"  # what NEXUS_MODELS lets this node serve
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = {}  # read only: a subclass replaces it whole

    def __init__(self, root: Path, hub_url: str, token: str | None) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hub_url = hub_url
        (root / "models").mkdir(parents=True, exist_ok=True)
        self.start(token)

    def start(self, token: str | None) -> None:
        args = [
            *NEXUS,
            "edge",
            "serve",
            "--models",
            str(self.root / "models"),
            "--data-dir",
            str(self.root / "data"),
            "--port",
            str(self.port),
            "--hub",
            self.hub_url,
            "--log-level",
            "warning",
        ]
        if token:  # the spelling; deploy/ uses --enroll-token-file
            args += [f"--enroll-token={token}"]  # "=": a token may start with "-"
        args += self.extra_args
        env = {**os.environ, "NEXUS_MODELS": self.models, **self.extra_env}
        with open(self.root / "edge.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)

    def served(self) -> str | None:
        try:
            text = httpx.get(self.url + "/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        loaded = parse(text).get("nexus_edge_model_loaded_info", {})
        return next(
            (dict(labels)["version"] for labels, v in loaded.items() if ("model", self.models) in labels and v == 1),
            None,
        )

    def metric(self, name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", httpx.get(self.url + "/metrics", timeout=2).text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Federation:
    """A hub with its SuperLink and one edge per region, as :func:`running_federation` starts them."""

    hub: HubProcess
    admin: OperatorClient
    token: str  # the hub's admin token
    edges: list[EdgeProcess]
    superlink_port: int

    def hub_args(self) -> tuple[str, ...]:
        return ("--poll-interval", "0.5", "--superlink-port", str(self.superlink_port))


@contextmanager
def running_federation(root: Path, model: str, edge: type[EdgeProcess], regions: Iterable[int]) -> Iterator[Federation]:
    """A hub with its SuperLink, serving ``model`` version 1 as stable, and one edge per region."""
    need(
        (BIN / "flower-superlink").exists() and (BIN / "flower-supernode").exists(),
        "Flower's binaries are not installed in this environment",
    )
    superlink_port = free_port()
    hub = HubProcess(root / "hub", free_port(), "--poll-interval", "0.5", "--superlink-port", str(superlink_port))
    token = (root / "hub" / "admin.token").read_text().strip()
    fed = Federation(hub, OperatorClient(hub.url, token), token, [], superlink_port)
    try:
        base = fed.admin.push(DEFAULT_REPOSITORY / model / "1")
        fed.admin.promote(model, base["version"], "stable")
        for region in regions:
            enroll = fed.admin.create_token({"region": str(region)})["token"]
            fed.edges.append(edge(root / f"edge-{region}", hub.url, enroll))
        yield fed
    finally:
        for e in fed.edges:
            e.stop()
        fed.admin.close()
        fed.hub.stop()
