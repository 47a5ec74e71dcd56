"""``nexus bench models|edge|funnels|hub|audit|rounds`` and ``nexus demo``: the tooling's sub-commands.

nexus_cli.py adds ``bench`` before the product's commands and ``demo`` after them.
"""

from __future__ import annotations

import argparse

from nexus_tools import bench_audit, bench_edge, bench_funnels, bench_hub, bench_models, bench_rounds, demo


def register_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that report medians and ratios measured in one run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="TARGET")
    for module in (bench_models, bench_edge, bench_funnels, bench_hub, bench_audit, bench_rounds):
        module.register(bench_sub)


def register_demo(sub: argparse._SubParsersAction) -> None:
    demo.register(sub)
