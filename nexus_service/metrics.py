"""Prometheus text exposition (format 0.0.4) for the edge and the hub, and one view over
an edge's ``--workers``, written here rather than with ``prometheus_client``.

We measured the library (0.26, its multiprocess mode for ``--workers`` > 1) against this
module with ``nexus bench edge`` (2 workers, wrk, 2 cores; 4 alternating runs each): the
emotion/echo ratio fell from 0.474 to 0.428 (median) and emotion rps from 10,590 to
8,455, because each increment and observation on the request path is a locked write to a
memory-mapped file (4 to 11 us against 1 to 1.5 us here). docs/deploy.md has the figures.
Scrapes are checked with promtool and the library's own parser in the test suite.

The node needs a handful of counters, gauges and histograms; the hot path is a dict
lookup and a bisect under one lock.

With ``--workers`` > 1 every worker process has its own :class:`Registry`. To give one
view of the node, a worker in multiprocess mode (:meth:`Registry.share`) publishes a
snapshot of its registry to ``<folder>/<pid>-<start ns>.json`` once a second and at
shutdown (tmp file + ``os.replace``, so a reader sees a whole snapshot), and a scrape
merges the files of every worker of this server run with the answering worker's live
values, as prometheus_client's multiprocess mode does. Nothing touches a file on the
request path. How a family merges (``merge`` of :meth:`Registry.declare`):

- ``sum`` (counters and histograms): summed over every worker, including the files of
  workers that have exited since the server started, so a counter never goes backwards
  within one run. The server command empties the folder at start (a restart starts from
  zero, as Prometheus expects).
- ``livesum`` (gauges of amounts, e.g. queue depth): summed over the live workers.
- ``livemax`` (the default for gauges: info gauges, failure streaks, timestamps): the
  largest value of each series over the live workers; an info gauge thus shows every
  version some live worker serves (both, mid hot swap), whichever worker answers.

A worker is live while its pid exists and it has not written its exit snapshot.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Labels = tuple[tuple[str, str], ...]
Merge = Literal["sum", "livesum", "livemax"]

#: request latency: 0.5 ms (a cached answer on loopback) to 5 s (a request about to time out)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: how often a worker in multiprocess mode publishes its snapshot (seconds)
PUBLISH_INTERVAL_S = 1.0

log = logging.getLogger("nexus.metrics")


def power_of_two_buckets(largest: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to and including ``largest``: the bounds of a batch-size histogram."""
    return (*(float(1 << i) for i in range(largest.bit_length()) if 1 << i < largest), float(largest))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class _Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    buckets: tuple[float, ...] = ()
    merge: Merge = "sum"
    values: dict[Labels, float] = field(default_factory=dict)
    # histogram state per label set: bucket counts (+Inf last), sum
    hist: dict[Labels, tuple[list[int], list[float]]] = field(default_factory=dict)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if self.kind != "histogram":
            lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self.values.items())]
            return lines
        for key, (counts, total) in sorted(self.hist.items()):
            cumulative = 0
            for bound, count in zip(self.buckets + (float("inf"),), counts):
                cumulative += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                lines.append(f"{self.name}_bucket{_labels(key, (('le', le),))} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(key)} {cumulative}")
        return lines

    def copy(self, *, with_values: bool = True) -> _Family:
        family = _Family(self.name, self.kind, self.help, self.buckets, self.merge)
        if with_values:
            family.values = dict(self.values)
            family.hist = {k: (list(counts), list(total)) for k, (counts, total) in self.hist.items()}
        return family

    def add(self, other: _Family) -> None:
        """Fold another worker's series of this family in, by the family's merge rule."""
        pick = max if self.merge == "livemax" else (lambda a, b: a + b)
        for key, value in other.values.items():
            self.values[key] = pick(self.values[key], value) if key in self.values else value
        for key, (counts, total) in other.hist.items():
            mine = self.hist.setdefault(key, ([0] * len(counts), [0.0]))
            mine[0][:] = [a + b for a, b in zip(mine[0], counts)]
            mine[1][0] += total[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "help": self.help,
            "buckets": list(self.buckets),
            "merge": self.merge,
            "values": [[list(map(list, k)), v] for k, v in self.values.items()],
            "hist": [[list(map(list, k)), counts, total[0]] for k, (counts, total) in self.hist.items()],
        }

    @staticmethod
    def from_json(name: str, data: dict[str, Any]) -> _Family:
        family = _Family(name, data["kind"], data["help"], tuple(data["buckets"]), data["merge"])
        family.values = {_key(k): float(v) for k, v in data["values"]}
        family.hist = {_key(k): (list(counts), [float(total)]) for k, counts, total in data["hist"]}
        return family


def _key(pairs: list[list[str]]) -> Labels:
    return tuple((k, v) for k, v in pairs)


@dataclass
class WorkerSnapshot:
    """Another worker's published registry, and whether that worker still runs."""

    live: bool
    families: list[_Family]


def merge(own: Sequence[_Family], others: Iterable[WorkerSnapshot]) -> list[_Family]:
    """The node's view: this worker's live families plus the other workers' snapshots.

    ``own`` is taken as it is (it is live); a family only other workers declared is
    appended after this worker's own, in the order first seen.
    """
    merged = {family.name: family.copy() for family in own}
    for worker in others:
        for family in worker.families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = family.copy(with_values=False)
            if worker.live or target.merge == "sum":
                target.add(family)
    return list(merged.values())


def _text(families: Iterable[_Family]) -> str:
    return "\n".join(line for family in families for line in family.render()) + "\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another user
        return True
    return True


class _WorkerFiles:
    """One file per worker process of a server run, in one shared directory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        # pid + start time: a reused pid in the same run never overwrites an exited worker's counts
        self.path = directory / f"{os.getpid()}-{time.time_ns()}.json"
        # Snapshot and write under one lock, so the file's values never go backwards.
        self.lock = threading.Lock()

    def write(self, families: Sequence[_Family], exited: bool) -> None:
        body = {"pid": os.getpid(), "exited": exited, "families": {f.name: f.to_json() for f in families}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, separators=(",", ":")))
        os.replace(tmp, self.path)

    def others(self) -> list[WorkerSnapshot]:
        snapshots = []
        for path in sorted(self.directory.glob("*.json")):
            if path == self.path:
                continue  # the answering worker uses its live values
            try:
                body = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # never expected: writes are atomic
                log.warning("skipping unreadable metrics file %s: %s", path, exc)
                continue
            families = [_Family.from_json(name, data) for name, data in body["families"].items()]
            snapshots.append(WorkerSnapshot(not body["exited"] and _alive(body["pid"]), families))
        return snapshots


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        # Observations come from the event loop and from inference threads.
        self._lock = threading.Lock()
        self._collectors: list[Callable[[], None]] = []
        self._files: _WorkerFiles | None = None

    def _family(self, name: str, kind: str, help: str, buckets: tuple[float, ...], merge: Merge | None) -> _Family:
        family = self._families.get(name)
        if family is None:
            rule: Merge = merge or ("livemax" if kind == "gauge" else "sum")
            family = self._families[name] = _Family(name, kind, help, buckets, rule)
        return family

    def declare(
        self, name: str, kind: str, help: str, buckets: tuple[float, ...] = (), merge: Merge | None = None
    ) -> None:
        """``merge``: how workers' series combine (module docstring); default ``sum``, gauges ``livemax``."""
        with self._lock:
            self._family(name, kind, help, buckets, merge)

    def on_collect(self, sample: Callable[[], None]) -> None:
        """Run ``sample`` before each render and publish: for gauges read, not updated (queue depth)."""
        self._collectors.append(sample)

    def inc(self, name: str, labels: Labels = (), amount: float = 1.0) -> None:
        with self._lock:
            family = self._families[name]
            family.values[labels] = family.values.get(labels, 0.0) + amount

    def set(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            self._families[name].values[labels] = value

    def remove(self, name: str, labels: Labels) -> None:
        with self._lock:
            self._families[name].values.pop(labels, None)

    def observe(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            family = self._families[name]
            state = family.hist.get(labels)
            if state is None:
                state = family.hist[labels] = ([0] * (len(family.buckets) + 1), [0.0])
            state[0][bisect.bisect_left(family.buckets, value)] += 1
            state[1][0] += value

    def value(self, name: str, labels: Labels = ()) -> float:
        """This process's value (not merged over workers)."""
        with self._lock:
            return self._families[name].values.get(labels, 0.0)

    def snapshot(self) -> list[_Family]:
        for sample in self._collectors:
            sample()
        with self._lock:
            return [family.copy() for family in self._families.values()]

    # -- multiprocess mode ---------------------------------------------------------------

    def share(self, directory: Path) -> None:
        """Publish to and merge from ``directory`` (one file per worker of this server run)."""
        self._files = _WorkerFiles(directory)

    @property
    def shared(self) -> bool:
        return self._files is not None

    def publish(self, *, exited: bool = False) -> list[_Family]:
        """Write this worker's snapshot for the others' scrapes (when shared); returns the snapshot."""
        files = self._files
        if files is None:
            return self.snapshot()
        with files.lock:
            families = self.snapshot()
            files.write(families, exited)
        return families

    def render(self) -> str:
        """The scrape: in multiprocess mode merged over every worker of this server run.

        The answering worker publishes the very values it renders first: the next scrape
        may be answered by another worker, reading this one's file, and must not see less.
        """
        families = self.publish()
        if self._files is not None:
            families = merge(families, self._files.others())
        return _text(families)


async def publish_forever(registry: Registry, interval_s: float = PUBLISH_INTERVAL_S) -> None:
    """A worker's background task in multiprocess mode: publish now, then every ``interval_s``."""
    while True:
        try:
            await asyncio.to_thread(registry.publish)
        except OSError:  # a full disk must not end publishing for good
            log.exception("publishing metrics failed; retrying in %.0f s", interval_s)
        await asyncio.sleep(interval_s)
