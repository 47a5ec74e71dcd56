"""``nexus bench models``: in-process latency of the shipped predictors, and artifact sizes.

Medians over many calls of featurize + run, exactly what an edge does per request. The
sample texts repeat, so the featurizer's per-word cache is warm: the steady state for
common words (an unseen word costs a few more microseconds of hashing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ARTIFACTS, BACKENDS, DEFAULT_REPOSITORY, newest_bundle, verify_bundle
from models.families import FAMILIES, load_predictor
from nexus_tools.examples import SESSION

_TEXTS = [
    "I love this, thank you so much!",
    "Why does the checkout keep failing, this is infuriating",
    "Not sure what to think about the new pricing.",
    "Wow, I did not expect the parcel to arrive today",
    "That's disgusting, the product smelled awful",
    "I'm scared my card was charged twice",
    "So sad the sale ended before I could order",
    "ok",
]


def _median_us(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: first calls allocate and fill caches
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter_ns()
        call()
        times[i] = time.perf_counter_ns() - start
    return float(np.median(times) / 1000.0)


def bench_bundle(bundle_dir: Path, items: Sequence[Any], repeats: int = 2000, threads: int = 1) -> dict[str, Any]:
    bundle = verify_bundle(bundle_dir)
    result: dict[str, Any] = {"model": bundle.name, "version": bundle.version, "sizes_bytes": {}, "backends": {}}
    for backend in BACKENDS:
        result["sizes_bytes"][ARTIFACTS[backend]] = bundle.artifact(backend).stat().st_size
        result["backends"][backend] = _bench_predictor(
            load_predictor(bundle_dir, backend, threads=threads), items, repeats
        )
    return result


def _bench_predictor(predictor: Any, items: Sequence[Any], repeats: int) -> dict[str, float]:
    cycle = iter(range(1 << 62))
    single = _median_us(lambda: predictor.predict([items[next(cycle) % len(items)]]), repeats)
    batch = [items[i % len(items)] for i in range(32)]
    batch_us = _median_us(lambda: predictor.predict(batch), max(repeats // 10, 50))
    return {"single_p50_us": round(single, 1), "batch32_per_item_p50_us": round(batch_us / 32, 1)}


def run(repository: Path, repeats: int) -> dict[str, Any]:
    return {
        "threads": 1,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "emotion": bench_bundle(newest_bundle(repository, "emotion"), _TEXTS, repeats),
        "funnel": bench_bundle(newest_bundle(repository, "funnel"), [SESSION], repeats),
    }


def _bench(args: argparse.Namespace) -> int:
    result = run(Path(args.models), args.repeats)
    if args.json:
        print(json.dumps(result))
        return 0
    for family in FAMILIES.names():
        print(f"{family} {result[family]['version']}: sizes {result[family]['sizes_bytes']}")
        for backend, figures in result[family]["backends"].items():
            single, batch = figures["single_p50_us"], figures["batch32_per_item_p50_us"]
            print(f"  {backend:>10}: single p50 {single} us, batch of 32 {batch} us/item")
    return 0


def register(bench_sub: argparse._SubParsersAction) -> None:
    bench = bench_sub.add_parser(
        "models", help="in-process latency (featurize + run) of each backend, and artifact sizes"
    )
    bench.add_argument(
        "--models", default=str(DEFAULT_REPOSITORY), help="model repository (default: the shipped bundles)"
    )
    bench.add_argument("--repeats", type=int, default=2000, help="timed calls per model, backend and batch size")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(func=_bench)
