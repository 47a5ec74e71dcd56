"""``nexus bench models``: in-process latency of the shipped predictors, and artifact sizes.

Medians over many calls of featurize + run, exactly what an edge does per request. The
sample texts repeat, so the featurizer's per-word cache is warm: the steady state for
common words (an unseen word costs a few more microseconds of hashing). The emotion
family's tiers run in the same sitting, and ``tiers`` gives the accurate tier's figures
as ratios to the fast tier's (the same-run baseline), each on its default backend.
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

from models.bundle import ARTIFACTS, DEFAULT_REPOSITORY, newest_bundle, verify_bundle
from models.errors import NexusError
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


#: each family's sample items; the emotion tiers score the same texts
_ITEMS: dict[str, Sequence[Any]] = {"emotion": _TEXTS, "emotion-accurate": _TEXTS, "funnel": [SESSION]}
#: (baseline, other): the tiers of one family compared in the same run
_TIERS = (("emotion", "emotion-accurate"),)
#: a transformer call costs about a thousand times an embedding bag's: fewer repeats keep the run short
_REPEAT_SHARE = {"emotion-accurate": 10}


def bench_bundle(bundle_dir: Path, items: Sequence[Any], repeats: int = 2000, threads: int = 1) -> dict[str, Any]:
    """Figures of every backend the bundle ships (the accurate tier's committed bundle ships a subset)."""
    bundle = verify_bundle(bundle_dir)
    result: dict[str, Any] = {
        "model": bundle.name,
        "version": bundle.version,
        "tier": bundle.tier,
        "default_backend": bundle.default_backend,
        "sizes_bytes": {},
        "backends": {},
    }
    for backend in bundle.backends:
        result["sizes_bytes"][ARTIFACTS[backend]] = bundle.artifact(backend).stat().st_size
        result["backends"][backend] = _bench_predictor(
            load_predictor(bundle_dir, backend, threads=threads), items, repeats
        )
    return result


def _bench_predictor(predictor: Any, items: Sequence[Any], repeats: int) -> dict[str, float]:
    cycle = iter(range(1 << 62))
    single = _median_us(lambda: predictor.predict([items[next(cycle) % len(items)]]), repeats)
    batch = [items[i % len(items)] for i in range(32)]
    batch_us = _median_us(lambda: predictor.predict(batch), max(repeats // 10, 20))
    return {
        "single_p50_us": round(single, 1),
        "batch32_per_item_p50_us": round(batch_us / 32, 1),
        "batch32_items_per_s": round(32e6 / batch_us, 1),
    }


def _tier_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Each tier against its family's fast tier, default backend against default backend."""
    out: dict[str, Any] = {}
    for base, other in _TIERS:
        if base not in result or other not in result:
            continue
        a = result[base]["backends"][result[base]["default_backend"]]
        b = result[other]["backends"][result[other]["default_backend"]]
        out[f"{other} vs {base}"] = {
            "backends": [result[other]["default_backend"], result[base]["default_backend"]],
            "single_p50_ratio": round(b["single_p50_us"] / a["single_p50_us"], 1),
            "batch32_items_per_s_ratio": round(b["batch32_items_per_s"] / a["batch32_items_per_s"], 4),
        }
    return out


def run(repository: Path, repeats: int) -> dict[str, Any]:
    result: dict[str, Any] = {"threads": 1, "load_average_1m": round(os.getloadavg()[0], 2), "missing": {}}
    for family in FAMILIES.names():
        try:
            bundle_dir = newest_bundle(repository, family)
        except NexusError as exc:  # a repository need not hold every family
            result["missing"][family] = str(exc)
            continue
        share = _REPEAT_SHARE.get(family, 1)
        result[family] = bench_bundle(bundle_dir, _ITEMS[family], max(repeats // share, 20))
    result["tiers"] = _tier_ratios(result)
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def _bench(args: argparse.Namespace) -> int:
    result = run(Path(args.models), args.repeats)
    if args.json:
        print(json.dumps(result))
        return 0
    for family in FAMILIES.names():
        if family not in result:
            print(f"{family}: {result['missing'][family]}")
            continue
        print(f"{family} {result[family]['version']} ({result[family]['tier']}): sizes {result[family]['sizes_bytes']}")
        for backend, figures in result[family]["backends"].items():
            single, batch = figures["single_p50_us"], figures["batch32_per_item_p50_us"]
            rate = figures["batch32_items_per_s"]
            print(f"  {backend:>10}: single p50 {single} us, batch of 32 {batch} us/item ({rate} items/s)")
    for name, ratio in result["tiers"].items():
        print(
            f"{name} ({' vs '.join(ratio['backends'])}): single p50 x{ratio['single_p50_ratio']},"
            f" batch-32 throughput x{ratio['batch32_items_per_s_ratio']}"
        )
    print(f"load average (1 min): {result['load_average_1m']} before, {result['load_average_1m_after']} after")
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
