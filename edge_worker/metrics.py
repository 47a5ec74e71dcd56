"""Prometheus text exposition (format 0.0.4), written here rather than with prometheus_client.

The node needs a handful of counters, gauges and histograms; a few dozen lines keep the
hot path to a dict lookup and a bisect. Metrics are per process: with ``--workers`` > 1
each scrape sees the worker that answered it (as prometheus_client does without its
multiprocess mode).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        # Observations come from the event loop and from inference threads.
        self._lock = threading.Lock()

    def _family(self, name: str, kind: str, help: str, buckets: tuple[float, ...] = ()) -> _Family:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(name, kind, help, buckets)
        return family

    def declare(self, name: str, kind: str, help: str, buckets: tuple[float, ...] = ()) -> None:
        with self._lock:
            self._family(name, kind, help, buckets)

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
        with self._lock:
            return self._families[name].values.get(labels, 0.0)

    def render(self) -> str:
        with self._lock:
            lines = [line for family in self._families.values() for line in family.render()]
        return "\n".join(lines) + "\n"


def edge_registry() -> Registry:
    """The node's metric families, declared up front so a scrape always lists them."""
    registry = Registry()
    registry.declare("nexus_edge_requests_total", "counter", "HTTP requests by route, method and status")
    registry.declare("nexus_edge_request_duration_seconds", "histogram", "HTTP request latency by route", LATENCY_BUCKETS)
    registry.declare("nexus_edge_inference_items_total", "counter", "items (texts, sessions) scored per model")
    registry.declare("nexus_edge_inference_duration_seconds", "histogram", "time to run one batch per model", LATENCY_BUCKETS)
    registry.declare("nexus_edge_batch_size", "histogram", "items per executed batch", BATCH_BUCKETS)
    registry.declare("nexus_edge_queue_depth", "gauge", "items waiting for a batch slot per model")
    registry.declare("nexus_edge_model_loaded_info", "gauge", "1 for the version each model serves")
    registry.declare("nexus_edge_model_loads_total", "counter", "successful model (re)loads")
    registry.declare("nexus_edge_model_load_failures_total", "counter", "bundles that failed to verify or load (old version kept)")
    registry.declare("nexus_edge_store_rows_erased_total", "counter", "local-store rows removed by retention or erasure")
    return registry
