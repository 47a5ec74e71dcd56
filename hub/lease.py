"""The rounds driver's lease: exactly one hub replica drives federated rounds and the
SuperLink at a time (hub/driver.py), and what it writes is fenced.

A replica takes the lease in the store for ``ttl_s`` seconds and renews it every third of
that; each taking draws a fencing token one above any before. The driver's writes of run
and round records go through :class:`FencedStore`, which the store refuses once a newer
token exists: a replica that stalled past its lease (a long GC pause, a partition) and wakes
up still believing it drives cannot overwrite what its successor wrote.

A holder names itself ``host/pid/nonce url``: the URL is where the other replicas forward
the operator's round commands; host and pid let a replica on the same host see at once that
the holder's process is gone (a crash, ``kill -9``) and take over without waiting out the
TTL. Anywhere else a dead holder's lease simply expires.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hub.store.base import Fence, LeaseRecord, RunRecord, Store
from models.errors import NexusError

log = logging.getLogger("nexus.hub.lease")
ROUNDS_LEASE = "rounds-driver"


class LeaseLost(NexusError):
    """A fenced write was refused: another replica took the lease since this one's token."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    nonce: str
    url: str

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.nonce} {self.url}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        who, _, url = text.partition(" ")
        host, _, rest = who.partition("/")
        pid, _, nonce = rest.partition("/")
        return cls(host, int(pid), nonce, url) if pid.isdigit() and nonce else None

    @classmethod
    def this_process(cls, url: str) -> Holder:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4), url)

    def dead_here(self, me: Holder) -> bool:
        """Whether this holder was a process on ``me``'s host that no longer runs (its own
        earlier life when the pid is ours: a restarted container keeps its hostname and pid)."""
        if self.host != me.host or self == me:
            return False
        return self.pid == me.pid or not Path(f"/proc/{self.pid}").exists()


class Lease:
    """This replica's side of one lease; blocking calls (the driver runs them off the loop)."""

    def __init__(self, store: Store, name: str, me: Holder, ttl_s: float) -> None:
        self.store = store
        self.name = name
        self.me = me
        self.ttl_s = ttl_s
        #: the token of this replica's latest taking, kept after the lease is lost: its late
        #: writes still carry it, and the store refuses them once another replica took over
        self.token: int | None = None
        self._holding = False
        #: monotonic time until which this replica may act as the holder (its last renewal's view)
        self.valid_until = 0.0

    @property
    def held(self) -> bool:
        """Whether this replica holds the lease and may act on it (its last renewal is recent)."""
        return self._holding and time.monotonic() < self.valid_until

    @property
    def holding(self) -> bool:
        """Whether it took the lease and has not seen it lost (it may be past its TTL unrenewed)."""
        return self._holding

    def fence(self) -> Fence | None:
        """What this replica's guarded writes carry; ``None`` before it ever held the lease."""
        return Fence(self.name, self.token) if self.token is not None else None

    def try_acquire(self) -> bool:
        started = time.monotonic()
        current = self.store.get_lease(self.name)
        holder = Holder.parse(current.holder) if current is not None else None
        replace = current.holder if current is not None and holder is not None and holder.dead_here(self.me) else None
        token = self.store.acquire_lease(self.name, str(self.me), self.ttl_s, replace)
        if token is None:
            return False
        if current is not None and replace is not None:
            log.warning("took the %s lease from %s, whose process is gone", self.name, current.holder)
        self.token, self._holding, self.valid_until = token, True, started + self.ttl_s
        return True

    def renew(self) -> bool:
        """Extend the lease; ``False`` once it is lost (it expired, or another replica holds it)."""
        if not self._holding or self.token is None:
            return False
        started = time.monotonic()
        if self.store.renew_lease(self.name, str(self.me), self.token, self.ttl_s):
            self.valid_until = started + self.ttl_s
            return True
        self._holding = False
        return False

    def release(self) -> None:
        if self._holding and self.token is not None:
            self.store.release_lease(self.name, str(self.me), self.token)
        self._holding = False

    def drop(self) -> None:
        """Stop acting as the holder without a store call (the store cannot be reached)."""
        self._holding = False

    def holder(self) -> LeaseRecord | None:
        return self.store.get_lease(self.name)


class FencedStore:
    """A view of a store whose run and round writes carry the lease's fence (every other
    method is the store's own): once this replica held the lease, none of its writes lands
    after a successor took it. A replica that never held it writes unfenced: it writes runs
    only where no replica drives and rounds are off here (hub/driver.py forwards every other
    round command to the driver, and only the holder watches runs)."""

    def __init__(self, store: Store, lease: Lease) -> None:
        self._store = store
        self._lease = lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def put_run(self, run: RunRecord) -> None:
        fence = self._lease.fence()
        if fence is None:
            self._store.put_run(run)
        elif not self._store.put_run_fenced(run, fence):
            raise LeaseLost(f"run {run.run_id} not written: another replica drives rounds since token {fence.token}")

    def put_round(self, run_id: str, round_no: int, metrics: dict[str, Any]) -> None:
        fence = self._lease.fence()
        if fence is None:
            self._store.put_round(run_id, round_no, metrics)
        elif not self._store.put_round_fenced(run_id, round_no, metrics, fence):
            raise LeaseLost(f"round {round_no} of run {run_id} not written: another replica drives rounds")

    def as_store(self) -> Store:
        """Typed as the interface it stands in for (it has every method, through the store)."""
        return cast(Store, self)
