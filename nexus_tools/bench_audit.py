"""``nexus bench audit``: what consistency checking costs per heartbeat on a large audit log.

Builds a real audit log of ``--entries`` entries (the node's own ``AuditLog.record_send``,
signed heads and stored subtrees included) in a temporary data dir, then times, ``--runs``
times each, what one heartbeat adds on either side:

- the edge: ``AuditLog.consistency_proof`` from the head the hub holds to the newest one, on
  the node's own connection, as the sync agent asks for it (``edge_proof_us``: the hub held
  the head of the previous heartbeat, ``HEARTBEAT_GAP`` entries back; ``edge_proof_any_us``:
  from a random older head);
- the hub: ``audit_heads.track`` on that heartbeat, which checks the proof against the held
  head (``hub_verify_us``).

For scale, ``rehash_ms`` is what one proof cost when it was built by rehashing every leaf.
Figures are medians in microseconds (milliseconds for the rehash).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_worker.audit import AuditLog, AuditReader
from hub import audit_heads
from models.progress import Progress
from nexus_wire.merkle import tree_root

#: entries between two heartbeats of an idle node: the heartbeat, an assignment poll, a funnel-config poll
HEARTBEAT_GAP = 3


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def _build(data_dir: Path, entries: int, progress: Progress) -> AuditLog:
    log = AuditLog(data_dir)
    for i in range(entries):
        log.record_send("sync", "http://hub.bench", "heartbeat", b'{"n":%d}' % i, {"health": "ok"})
        progress.update()
    return log


def run_bench(entries: int, runs: int, show_progress: bool, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    progress = Progress("bench audit", entries, enabled=show_progress)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-audit-") as tmp:
        log = _build(Path(tmp), entries, progress)
        progress.close()
        try:
            newest = log.tree_head()
            assert newest is not None
            n = newest.size
            reader = AuditReader(Path(tmp))
            heads = reader.tree_heads()
            previous = max(n - HEARTBEAT_GAP, 1)

            edge, edge_any, hub, lengths = [], [], [], []
            for _ in range(runs):
                start = time.perf_counter()
                proof = log.consistency_proof(previous, n)
                edge.append(time.perf_counter() - start)
                lengths.append(len(proof.proof))

                first = rng.randrange(1, n)
                start = time.perf_counter()
                log.consistency_proof(first, n)
                edge_any.append(time.perf_counter() - start)

                held = {audit_heads.LARGEST: asdict(heads[previous]), audit_heads.REGRESSION: None}
                beat = {
                    "health": "ok",
                    audit_heads.HEAD: asdict(newest),
                    audit_heads.CONSISTENCY: {"first_size": previous, "proof": proof.proof},
                }
                start = time.perf_counter()
                stored, regression = audit_heads.track(held, beat, 0.0)
                hub.append(time.perf_counter() - start)
                if regression is not None or stored[audit_heads.LARGEST]["size"] != n:
                    raise AssertionError("the hub did not take a proven head")  # the figure would time a failure

            rehash = []
            for _ in range(3):
                start = time.perf_counter()
                tree_root([entry.leaf_hash() for entry in reader.entries()])
                rehash.append(time.perf_counter() - start)
        finally:
            log.close()
    return {
        "entries": n,
        "runs": runs,
        "heartbeat_gap": HEARTBEAT_GAP,
        "proof_hashes": statistics.median(lengths),
        "edge_proof_us": _median_us(edge),
        "edge_proof_any_us": _median_us(edge_any),
        "hub_verify_us": _median_us(hub),
        "rehash_ms": round(statistics.median(rehash) * 1e3, 1),
    }


def register(bench_sub: argparse._SubParsersAction) -> None:
    bench = bench_sub.add_parser(
        "audit", help="µs per heartbeat for the edge's consistency proof and the hub's check, on a large audit log"
    )
    bench.add_argument("--entries", type=int, default=100_000, help="audit log size (default 100000)")
    bench.add_argument("--runs", type=int, default=101, help="proofs timed per figure (median reported)")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    result = run_bench(max(args.entries, 2), max(args.runs, 1), show_progress=not args.json)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
