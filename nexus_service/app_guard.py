"""The app guard (federated/app_guard.py) as a child process of the hub or an edge.

Both services run their Flower child with ``--isolation process``, so Flower launches no app
by itself; the guard beside it takes the tasks over the child's Runtime API (with the shared
SuperExec secret, a 0600 file made here) and launches only those whose FAB the hub signed.
The services start it by module name and never import ``federated``. It exits when its Flower
child does (``--parent-pid``), so whoever supervises the child restarts the guard with it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nexus_service.keyfiles import load_or_create_token
from nexus_service.processes import FlowerProcess

MODULE = "federated.app_guard"
#: what a guard's command line holds, so a restarted hub recognises its own (pids get reused)
MARKER = MODULE.encode()


def superexec_secret(path: Path) -> Path:
    """The secret the Flower child and its guard share (created on first use, 0600)."""
    load_or_create_token(path)
    return path


@dataclass(frozen=True)
class GuardConfig:
    app: str  # "clientapp" on an edge, "serverapp" on the hub
    runtime_port: int  # the Flower child's port on 127.0.0.1
    secret: Path
    #: ``--edge-data-dir DIR`` or ``--hub-key FILE --apps FILE``: whose key, which statements
    trust: Sequence[str]
    workdir: Path
    log: Path
    flwr_home: Path
    #: CA of the Flower child's TLS; None: plain HTTP on loopback
    root_certificates: Path | None = None
    #: more environment for the apps it launches (the hub's ServerApp: its signing key's path)
    env: Mapping[str, str] = field(default_factory=dict)


class AppGuard(FlowerProcess):
    binary = MODULE

    def __init__(self, config: GuardConfig) -> None:
        super().__init__(config.workdir, config.log, config.flwr_home, "127.0.0.1", config.runtime_port)
        self.config = config
        #: the Flower child the guard serves and exits with (set before each start)
        self.parent_pid: int | None = None

    def command(self) -> list[str]:
        c = self.config
        cmd = [sys.executable, "-m", MODULE, c.app, "--runtime-api-address", f"127.0.0.1:{c.runtime_port}"]
        cmd += ["--superexec-auth-secret-file", str(c.secret), *c.trust]
        if c.root_certificates is not None:
            cmd += ["--root-certificates", str(c.root_certificates)]
        if self.parent_pid is not None:
            cmd += ["--parent-pid", str(self.parent_pid)]
        return cmd

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.config.env}

    def ready(self) -> bool:
        return self.running  # it serves no port: running is all there is to check

    def start_for(self, parent_pid: int, ready_timeout: float = 30.0) -> None:
        self.parent_pid = parent_pid
        self.start(ready_timeout)
