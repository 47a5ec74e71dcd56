"""Keeps the hub's own SuperLink (``--superlink-port``) running across hub crashes.

The SuperLink runs in its own session, so a SIGKILLed hub leaves it running, still
serving the SuperNodes and the run in progress. Its pid is recorded in the state dir;
the next hub adopts it when it still serves the configured port (the run goes on and the
watcher resumes), or ends it first when it does not. A SuperLink that dies is restarted
on the same state db (runs and nodes persist; the SuperNodes reconnect).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hub.superlink import SuperLink
from nexus_service.processes import end_process_tree, port_open
from nexus_wire.datadir import SuperLinkDir

log = logging.getLogger("nexus.hub.superlink")


def _superlink_pid(state_dir: Path) -> int | None:
    """The recorded pid when that process is alive and still a flower-superlink (pids get reused)."""
    try:
        pid = int(SuperLinkDir(Path(state_dir)).pid.read_text())
        return pid if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


class SuperLinkKeeper:
    def __init__(self, link: SuperLink) -> None:
        self.link = link
        #: pid of a SuperLink a previous hub process started, now ours to supervise and stop
        self.adopted: int | None = None

    def _record(self) -> None:
        assert self.link.process is not None
        SuperLinkDir(Path(self.link.config.state_dir)).pid.write_text(str(self.link.process.pid))

    def open(self) -> None:
        pid = _superlink_pid(self.link.config.state_dir)
        if pid is not None and port_open(self.link.config.host, self.link.config.port):
            self.adopted = pid
            self.link.write_connection()
            log.warning("adopted the SuperLink (pid %d) a previous hub process left running; its runs go on", pid)
            return
        if pid is not None:
            log.warning("ending the SuperLink (pid %d) a previous hub process left on another port", pid)
            end_process_tree(pid)
        self.link.start(ready_timeout=60.0)
        self._record()

    def supervise(self) -> bool:
        """Restart the SuperLink if it died; True when it did."""
        if self.adopted is not None:
            if _superlink_pid(self.link.config.state_dir) == self.adopted:
                return False
            self.adopted = None
            self.link.start(ready_timeout=60.0)
        elif not self.link.supervise():
            return False
        self._record()
        return True

    def close(self) -> None:
        if self.adopted is not None:
            end_process_tree(self.adopted)
            self.adopted = None
        else:
            self.link.stop()
