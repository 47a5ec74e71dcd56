"""Keeps the hub's own SuperLink (``--superlink-port``) running across hub crashes, with its
app guard and its Fleet gateway.

The three run in sessions of their own, so a SIGKILLed hub leaves them running, still serving
the SuperNodes and the run in progress. Their pids are recorded in the state dir; the next hub
adopts each when it is still the same program and serves (the run goes on and the watcher
resumes), or ends it first when it does not. The SuperLink's loopback port is recorded too
(:func:`loopback_port`), so the next hub finds it. A child that dies is restarted: the
SuperLink on the same state db (runs and nodes persist; the SuperNodes reconnect), the guard
with it (it exits with its SuperLink), the gateway on the same address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hub.superlink import LOOPBACK, FleetGateway, SuperLink
from nexus_service.app_guard import MARKER as GUARD_MARKER
from nexus_service.app_guard import AppGuard
from nexus_service.keyfiles import write_private
from nexus_service.processes import FlowerProcess, end_process_tree, free_port, port_open
from nexus_wire.datadir import SuperLinkDir

log = logging.getLogger("nexus.hub.superlink")


def _pid(pid_file: Path, marker: bytes) -> int | None:
    """The recorded pid when that process is alive and still runs ``marker`` (pids get reused)."""
    try:
        pid = int(pid_file.read_text())
        return pid if marker in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


def _superlink_pid(state_dir: Path) -> int | None:
    return _pid(SuperLinkDir(Path(state_dir)).pid, b"flower-superlink")


def loopback_port(state_dir: Path) -> int:
    """The port the hub's SuperLink listens on at 127.0.0.1: the recorded one while it is still
    ours to use (our SuperLink serves it, or nobody does), else a free one, recorded."""
    layout = SuperLinkDir(Path(state_dir))
    try:
        port = int(layout.address.read_text().rsplit(":", 1)[1])
    except (OSError, ValueError, IndexError):
        port = 0
    if not 0 < port < 65536 or (port_open(LOOPBACK, port) and _superlink_pid(state_dir) is None):
        port = free_port()
        write_private(layout.address, f"{LOOPBACK}:{port}".encode())
    return port


@dataclass
class _Child:
    name: str
    process: FlowerProcess
    pid_file: Path
    marker: bytes
    #: pid of the process a previous hub started, now ours to supervise and stop
    adopted: int | None = None

    def recorded(self) -> int | None:
        return _pid(self.pid_file, self.marker)

    def alive(self) -> bool:
        return self.recorded() == self.adopted if self.adopted is not None else self.process.running


class SuperLinkKeeper:
    def __init__(self, link: SuperLink, guard: AppGuard | None = None, gateway: FleetGateway | None = None) -> None:
        self.link = link
        self.guard = guard
        self.gateway = gateway
        layout = SuperLinkDir(Path(link.config.state_dir))
        self._link = _Child("superlink", link, layout.pid, b"flower-superlink")
        self._guard = None if guard is None else _Child("app guard", guard, layout.guard_pid, GUARD_MARKER)
        self._gateway = (
            None if gateway is None else _Child("fleet gateway", gateway, layout.gateway_pid, b"hub.fleet_gateway")
        )

    @property
    def adopted(self) -> int | None:
        """Pid of the SuperLink a previous hub process started (None: this hub started its own)."""
        return self._link.adopted

    def _children(self) -> list[_Child]:
        return [c for c in (self._link, self._guard, self._gateway) if c is not None]

    def _serves(self, child: _Child) -> bool:
        if isinstance(child.process, FleetGateway):
            return child.process.answers()
        if isinstance(child.process, AppGuard):
            return self._link.adopted is not None  # it serves the SuperLink it exits with
        return port_open(LOOPBACK, child.process.port)

    def _start(self, child: _Child) -> None:
        if isinstance(child.process, AppGuard):
            child.process.start_for(self._link_pid())
        else:
            child.process.start(ready_timeout=60.0)
        assert child.process.process is not None
        child.pid_file.write_text(str(child.process.process.pid))

    def _link_pid(self) -> int:
        if self._link.adopted is not None:
            return self._link.adopted
        assert self.link.process is not None
        return self.link.process.pid

    def open(self) -> None:
        for child in self._children():
            pid = child.recorded()
            if pid is not None and self._serves(child):
                child.adopted = pid
                log.warning("adopted the %s (pid %d) a previous hub process left running", child.name, pid)
                continue
            if pid is not None:
                log.warning("ending the %s (pid %d) a previous hub process left behind", child.name, pid)
                end_process_tree(pid)
            self._start(child)
        if self._link.adopted is not None:
            self.link.write_connection()

    def supervise(self) -> list[str]:
        """Restart every child that died (the SuperLink first); the names of those restarted."""
        restarted: list[str] = []
        for child in self._children():
            # a guard exits with its SuperLink (within a fraction of a second): restart it with it
            if child.alive() and not (child is self._guard and restarted):
                continue
            child.adopted = None
            child.process.stop(timeout=5.0)  # reaps it; nothing when it is long gone
            child.process.restarts += 1
            self._start(child)
            restarted.append(child.name)
        return restarted

    def close(self) -> None:
        for child in reversed(self._children()):
            if child.adopted is not None:
                end_process_tree(child.adopted)
                child.adopted = None
            else:
                child.process.stop()
