"""The edge node's metric families (the registry and the multi-worker merge: :mod:`nexus_service.metrics`).

With ``--workers`` > 1 every worker publishes its snapshot to ``<data dir>/metrics/`` and a
scrape merges every worker of this server run. ``nexus edge serve`` empties that folder
before the workers start, so a restart starts from zero, as Prometheus expects.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nexus_service.metrics import (
    LATENCY_BUCKETS,
    Registry,
    WorkerSnapshot,
    merge,
    power_of_two_buckets,
    publish_forever,
)
from nexus_service.request_metrics import declare_requests
from nexus_wire.datadir import EdgeDataDir

__all__ = [
    "LATENCY_BUCKETS",
    "PREFIX",
    "Registry",
    "WorkerSnapshot",
    "edge_registry",
    "merge",
    "publish_forever",
    "reset_metrics_dir",
]

PREFIX = "nexus_edge"
#: the largest batch a node runs unless told otherwise (``EdgeSettings.max_batch``'s default)
DEFAULT_MAX_BATCH = 32


def reset_metrics_dir(data_dir: Path) -> None:
    """A new server run starts from zero: called before any worker starts."""
    shutil.rmtree(EdgeDataDir(Path(data_dir)).metrics, ignore_errors=True)


def edge_registry(max_batch: int = DEFAULT_MAX_BATCH) -> Registry:
    """The node's metric families, declared up front so a scrape always lists them."""
    registry = Registry()
    declare_requests(registry, PREFIX)
    registry.declare("nexus_edge_inference_items_total", "counter", "items (texts, sessions) scored per model")
    registry.declare(
        "nexus_edge_inference_duration_seconds", "histogram", "time to run one batch per model", LATENCY_BUCKETS
    )
    registry.declare("nexus_edge_batch_size", "histogram", "items per executed batch", power_of_two_buckets(max_batch))
    registry.declare("nexus_edge_queue_depth", "gauge", "items waiting for a batch slot per model", merge="livesum")
    registry.declare(
        "nexus_edge_rejected_total", "counter", "inference requests refused per model: too many in flight (429)"
    )
    registry.declare("nexus_edge_model_loaded_info", "gauge", "1 for the version each model serves", merge="livemax")
    registry.declare("nexus_edge_model_loads_total", "counter", "successful model (re)loads")
    registry.declare(
        "nexus_edge_model_load_failures_total", "counter", "bundles that failed to verify or load (old version kept)"
    )
    registry.declare(
        "nexus_edge_store_rows_erased_total", "counter", "local-store rows removed by retention or erasure"
    )
    return registry
