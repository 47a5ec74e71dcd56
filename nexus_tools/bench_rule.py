"""The rule every ``nexus bench`` keeps: it reports no figure its load generator set.

A closed-loop generator measures the server only while it can send faster than the server
answers. Each bench checks that in the same run, against a bare baseline, and refuses
(a :class:`~models.errors.NexusError`: one line, exit 2) when the generator could not:

- ``bench edge`` and ``bench funnels`` compare the edge with a bare Starlette echo
  (nexus_tools/echo.py) under the same load, driven by wrk. The echo must answer at least
  :data:`ECHO_RPS_PER_WORKER` requests/s per server process that has a core to itself,
  ``min(workers, usable cores)``: 5,000 with 2 workers on 2 cores. On the project's 2-core
  machine, shared with the server, wrk drove the echo at 8,000 to 24,000 requests/s with 2
  workers (4,600 to 5,500 while other jobs held the cores) and at about 9,000 with one; a
  Python generator manages 100 to 1,000 (httpx measured 92, and a "ratio" of 0.98, in issue
  16). Below the floor the generator, or a machine busy with something else, set the pace,
  and a ratio of two such figures says nothing about the edge. ``bench edge --generator
  httpx`` stays for smoke runs: it reports, but marks the report ``"valid": false`` and
  gives no ratio.
- ``bench hub`` drives the hub with its own asyncio HTTP/1.1 client (one process; wrk cannot
  send 200 nodes' credentials in turn). The same client first sends the same heartbeats to
  the echo, its ceiling on this machine; the hub's rate must stay within
  :data:`GENERATOR_SHARE` of it. Above that the client spends most of its core producing
  the hub's load, its own queueing is in the latency, and its ceiling caps the rate.
- ``bench models`` and ``bench audit`` have no generator: they time calls in-process
  (predictors; audit-log proofs and their check), so there is nothing to saturate.
"""

from __future__ import annotations

import os
import shutil

from models.errors import NexusError

WRK_INSTALL = "install it with `apt-get install wrk` (Debian, Ubuntu)"
#: requests/s the echo must reach per server process with a core of its own
ECHO_RPS_PER_WORKER = 2500.0
#: the largest share of its own ceiling (against the echo) a generator may be driving the server at
GENERATOR_SHARE = 0.75


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def echo_floor(workers: int) -> float:
    """The echo rate below which a run measured its generator (module docstring)."""
    return ECHO_RPS_PER_WORKER * max(1, min(workers, usable_cores()))


def require_wrk(bench: str, smoke: str | None = None) -> None:
    """Refuse to start without wrk: no silent fallback to a generator that measures itself."""
    if shutil.which("wrk"):
        return
    hint = f"; {smoke}" if smoke else ""
    raise NexusError(f"nexus bench {bench} needs wrk on PATH to load the servers harder than they answer: "
                     f"{WRK_INSTALL}{hint}")  # fmt: skip


def check_echo(bench: str, echo_rps: float, workers: int) -> None:
    """Refuse the run when wrk could not drive the echo past :func:`echo_floor`."""
    floor = echo_floor(workers)
    if echo_rps >= floor:
        return
    raise NexusError(
        f"nexus bench {bench}: the load generator drove the bare echo at only {echo_rps:.0f} requests/s, below "
        f"the floor of {floor:.0f} ({ECHO_RPS_PER_WORKER:.0f} per worker with a core, {workers} worker(s), "
        f"{usable_cores()} usable core(s)): the generator or other load on the machine (load average "
        f"{os.getloadavg()[0]:.1f}) set the pace, not the server, so no ratio is reported. Run it on an idle "
        f"machine with wrk ({WRK_INSTALL})"
    )


def check_headroom(bench: str, what: str, rate: float, ceiling: float) -> None:
    """Refuse a figure ``rate`` the generator drove at more than GENERATOR_SHARE of its ``ceiling``."""
    if rate <= GENERATOR_SHARE * ceiling:
        return
    raise NexusError(
        f"nexus bench {bench}: {what} of {rate:.0f}/s is {rate / ceiling:.0%} of the {ceiling:.0f}/s its load "
        f"generator reaches against a bare echo on this machine (more than {GENERATOR_SHARE:.0%}): the generator "
        f"set the pace, not the server, so the figure is not reported. Run it on an idle or larger machine"
    )
