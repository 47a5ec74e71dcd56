"""The node's one link to the hub, shared by model sync (sync.py), funnel sync (funnels.py)
and federation (federation.py): the egress gateway every request goes out through, the
node's identity, the leader lock, and the SuperLink address the hub names.

The app's lifespan creates it once per process (``EdgeState.hub``). Several worker
processes share one data dir; the holder of the leader lock is the node's leader: it
enrolls, heartbeats, syncs models and runs the SuperNode, while every worker pulls the
funnel config and reports counters. The leader learns the SuperLink from its heartbeat
replies and hands it to its own federation job in memory (:meth:`HubLink.wait_for_change`);
it also keeps it in the data dir, so a node restarted while the hub is down still knows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from pathlib import Path
from typing import IO

from edge_worker.audit import AuditLog
from edge_worker.egress import HubGateway
from edge_worker.hub_answers import superlink_address
from edge_worker.identity import NodeIdentity, load_identity, save_identity
from edge_worker.metrics import Registry
from nexus_service.keyfiles import write_private
from nexus_wire.datadir import EdgeDataDir

_EGRESS_METRICS = (
    ("nexus_edge_egress_messages_total", "counter", "requests sent to the hub per payload kind"),
    ("nexus_edge_egress_bytes_total", "counter", "bytes exchanged with the hub per payload kind and direction"),
)


class LeaderLock:
    """An exclusive ``flock`` on a file in the data dir, held until released or the process exits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> bool:
        """Take the lock without waiting; True while this process holds it."""
        if self._fh is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a")  # noqa: SIM115  (held open: the flock lasts as long as the file)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None


def _read_superlink(path: Path) -> str | None:
    try:
        address = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return superlink_address(address)


class HubLink:
    """One per node process: what model sync, funnel sync and federation share (module docstring)."""

    def __init__(self, data_dir: EdgeDataDir, gateway: HubGateway) -> None:
        self.data_dir = data_dir
        self.gateway = gateway
        self.leader = LeaderLock(data_dir.leader_lock)
        #: the SuperLink the hub named last (None before it named one)
        self.superlink: str | None = _read_superlink(data_dir.superlink)
        self._changed = asyncio.Event()

    @classmethod
    def open(cls, hub_url: str, data_dir: Path, timeout: float = 10.0) -> HubLink:
        """The link of the node in ``data_dir``, with its own audit log and gateway."""
        return cls(EdgeDataDir(Path(data_dir)), HubGateway(hub_url, AuditLog(data_dir), timeout=timeout))

    @property
    def audit(self) -> AuditLog:
        return self.gateway.audit

    @property
    def identity(self) -> NodeIdentity | None:
        """Known once :meth:`reload_identity` found it or :meth:`enrolled` set it."""
        return self.gateway.identity

    async def aclose(self) -> None:
        await self.gateway.aclose()
        self.audit.close()
        self.leader.release()

    # -- identity --------------------------------------------------------------------------
    async def reload_identity(self) -> NodeIdentity | None:
        """The identity, read again from the data dir while unknown: the leader (maybe another
        worker process, or one that died since) may have enrolled since this one started."""
        if self.gateway.identity is None:
            self.gateway.identity = await asyncio.to_thread(load_identity, self.data_dir.root)
            if self.gateway.identity is not None:
                self._notify()
        return self.gateway.identity

    def enrolled(self, identity: NodeIdentity) -> None:
        """Keep the identity the hub gave at enrollment (0600) and use it from now on."""
        save_identity(self.data_dir.root, identity)
        self.gateway.identity = identity
        self._notify()

    # -- leadership ------------------------------------------------------------------------
    def lead(self) -> bool:
        """Become (or stay) the node's leader; False while another process of the node is."""
        was = self.leader.held
        if not self.leader.acquire():
            return False
        if not was:
            self._notify()
        return True

    @property
    def leading(self) -> bool:
        return self.leader.held

    # -- the hub's SuperLink ---------------------------------------------------------------
    async def name_superlink(self, address: object) -> bool:
        """Adopt the SuperLink address of a heartbeat reply; True when it is well formed and new."""
        address = superlink_address(address)
        if address is None or address == self.superlink:
            return False
        self.superlink = address
        await asyncio.to_thread(write_private, self.data_dir.superlink, address.encode())
        self._notify()
        return True

    # -- watching --------------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        """Until the identity, the leadership or the SuperLink changes, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # -- metrics ---------------------------------------------------------------------------
    @staticmethod
    def declare_metrics(metrics: Registry) -> None:
        for name, kind, help_text in _EGRESS_METRICS:
            metrics.declare(name, kind, help_text)

    def sample_metrics(self, metrics: Registry) -> None:
        """The gateway's per-kind message and byte counts, for a scrape (after :meth:`declare_metrics`)."""
        gateway = self.gateway
        for kind, count in list(gateway.messages.items()):
            metrics.set("nexus_edge_egress_messages_total", (("kind", kind),), count)
            for direction, counts in (("out", gateway.bytes_out), ("in", gateway.bytes_in)):
                metrics.set("nexus_edge_egress_bytes_total", (("kind", kind), ("direction", direction)), counts[kind])
