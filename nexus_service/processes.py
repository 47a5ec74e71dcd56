"""A Flower SuperLink or SuperNode as a supervised child process.

The hub runs a SuperLink and each edge a SuperNode; the two packages may not import each
other, so what both need lives here. Flower starts its helper (``flower-superexec``) by
bare name and that helper starts each ServerApp/ClientApp in a session of its own, so
stopping the child's process group is not enough: :func:`end_process_tree` also ends
every descendant it finds under ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from models.errors import NexusError
from nexus_service.keyfiles import write_private


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for any Flower process or ``flwr`` CLI call of this deployment."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        # Flower would otherwise `uv sync` the app's dependencies from the network.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            # field 4 of stat is the parent pid; the command name (field 2) may hold spaces
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def recorded_pid(pid_file: Path, *markers: bytes) -> int | None:
    """The pid in ``pid_file`` when that process is alive and its command line holds every one of
    ``markers`` (pids get reused: a bare pid may by now be someone else's process)."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if cmdline and all(marker in cmdline for marker in markers) else None


def end_process_tree(pid: int, timeout: float = 10.0, kill: bool = False) -> None:
    """SIGTERM ``pid``'s process group and every descendant; SIGKILL what is left after ``timeout``."""
    tree = [pid, *descendants(pid)]
    if not kill:
        for target in tree:
            _signal(target, signal.SIGTERM, group=target == pid)
    reap(tree, 0.0 if kill else timeout)
    _signal(pid, signal.SIGKILL, group=True)  # group members that were reparented away from the tree


def reap(pids: list[int], grace: float) -> None:
    """Give ``pids`` ``grace`` seconds to exit, then SIGKILL the ones still alive."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for target in pids:
        if _alive(target):
            _signal(target, signal.SIGKILL, group=False)


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig) if group else os.kill(pid, sig)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child so it does not linger as a zombie
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class FlowerProcess:
    """Start, supervise and stop one Flower binary; subclasses give its command and paths."""

    binary: str

    def __init__(self, workdir: Path, log_path: Path, flwr_home: Path, host: str, port: int) -> None:
        self.workdir = Path(workdir)
        self.log_path = log_path
        self.flwr_home = flwr_home
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        #: where the child's pid is written as soon as it starts (before it is ready), so that a
        #: successor finds it after this process is SIGKILLed; None: nowhere
        self.pid_file: Path | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

    def start(self, ready_timeout: float = 30.0) -> None:
        if self.running:
            return
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        # the child keeps its own descriptor; a Flower log may quote run configs and node ids
        with os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.pid_file is not None:
            write_private(self.pid_file, str(self.process.pid).encode())
        self.wait_ready(ready_timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        return self.running and port_open(self.host, self.port)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if not self.running:
                code = self.process.returncode if self.process else None
                raise NexusError(f"{self.binary} exited with code {code}; see {self.log_path}")
            time.sleep(0.2)
        raise NexusError(f"{self.binary} not ready on port {self.port} after {timeout:.0f}s; see {self.log_path}")

    def supervise(self) -> bool:
        """Restart the process if it died; True when it did."""
        if self.process is None or self.running:
            return False
        self.restarts += 1
        self.start()
        return True

    def stop(self, timeout: float = 10.0, kill: bool = False) -> None:
        """SIGTERM the process and its apps (SIGKILL after ``timeout``, or at once with ``kill``)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            end_process_tree(self.process.pid, timeout, kill)
            self.process.wait()
        self.process = None
