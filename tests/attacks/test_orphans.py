"""Issue 14, against a real hub, its SuperLink and a real edge with its SuperNode: ``kill -9`` of the edge.

Before: the SuperNode (and its app guard) of a SIGKILLed edge ran on; the restarted edge's
SuperNode could not bind its ``--supernode-port`` and was restarted forever (with the default free
port there were two SuperNodes for one data dir). Now the pids are kept in the data dir and the
restarted edge ends the orphans before it starts its own: one SuperNode per data dir.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

from hub.superlink import SuperLink, SuperLinkConfig
from nexus_service.app_guard import MARKER as GUARD_MARKER
from nexus_service.processes import end_process_tree, free_port, recorded_pid
from nexus_wire.datadir import EdgeDataDir
from tests.support.processes import EdgeProcess, running_federation, wait_for

pytestmark = pytest.mark.slow


class FixedPortEdge(EdgeProcess):
    """An edge whose SuperNode joins the SuperLink its hub names, on a port of its own (as deployed)."""

    def __init__(self, root: Path, hub_url: str, token: str | None) -> None:
        self.extra_args = ("--superlink", "auto", "--supernode-port", str(free_port()))
        super().__init__(root, hub_url, token)


def _processes(marker: bytes, here: bytes) -> list[int]:
    """Live processes whose command line holds ``marker`` and ``here`` (the data dir's secret path)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
            if (
                marker in cmdline
                and here in cmdline
                and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            ):
                found.append(int(entry.name))
    return found


def test_a_restarted_edge_ends_the_supernode_a_killed_one_left(tmp_path: Path) -> None:
    with running_federation(tmp_path, "funnel", FixedPortEdge, (1,)) as fed:
        edge = fed.edges[0]
        layout = EdgeDataDir(edge.root / "data")
        here = str(layout.superexec_secret).encode()
        link = SuperLink(SuperLinkConfig(fed.hub.data_dir / "flower", port=fed.superlink_port))
        orphans: list[int] = []
        try:
            wait_for(lambda: len(link.online_nodes()) == 1, timeout=90, what="the SuperNode registered")
            old_node = recorded_pid(layout.supernode_pid, b"flower-supernode", here)
            old_guard = recorded_pid(layout.guard_pid, GUARD_MARKER, here)
            assert old_node is not None and old_guard is not None
            orphans = [old_guard, old_node]

            edge.proc.send_signal(signal.SIGKILL)
            edge.proc.wait(timeout=10)
            # the crash itself leaves them running: they are in sessions of their own
            assert _processes(b"flower-supernode", here) == [old_node]
            assert old_guard in _processes(GUARD_MARKER, here)

            edge.start(None)  # enrolled already: the identity is in the data dir

            def one_new() -> bool:
                nodes = _processes(b"flower-supernode", here)
                return len(nodes) == 1 and nodes[0] != old_node

            wait_for(one_new, timeout=90, what="exactly one SuperNode, the restarted edge's")
            assert old_guard not in _processes(GUARD_MARKER, here)
            wait_for(lambda: len(_processes(GUARD_MARKER, here)) == 1, timeout=30, what="the new app guard")
            wait_for(lambda: len(link.online_nodes()) == 1, timeout=60, what="the new SuperNode registered")
            # and it stays the only one (no restart loop on a port the orphan holds)
            assert _processes(b"flower-supernode", here) == [recorded_pid(layout.supernode_pid, b"flower-supernode")]
        finally:
            for pid in orphans:  # whatever a failed run left behind
                if pid in _processes(b"", here):
                    end_process_tree(pid, kill=True)
