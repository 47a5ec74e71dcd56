"""``nexus federated simulate``: central vs federated vs local-only on a partitioned data set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.families import FAMILIES
from nexus_wire.runconfig import add_flags

#: the run-config keys a simulation takes; it sets the others itself
_RUN_KEYS = ("rounds", "local_epochs", "strategy", "server_momentum", "compression")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("federated", help="federated learning experiments")
    sub = parser.add_subparsers(dest="federated_command", required=True, metavar="COMMAND")
    sim = sub.add_parser(
        "simulate", help="compare central, federated and local-only training (in-process Flower rounds)"
    )
    add_flags(sim, ["model"], model={"required": True, "choices": FAMILIES.names(), "metavar": None})
    sim.add_argument(
        "--data", type=Path, required=True, help="funnel: sessions CSV; emotion: train.tsv (labels.txt beside it)"
    )
    sim.add_argument(
        "--eval",
        type=Path,
        help="scored on this file; funnel: the same CSV means its fixed held-out split (default); "
        "emotion: dev.tsv beside --data",
    )
    sim.add_argument(
        "--partition",
        default=None,
        help="region | iid | dirichlet:ALPHA (default: region for funnel, dirichlet:0.5 for emotion)",
    )
    sim.add_argument("--nodes", type=int, default=10, help="nodes for iid / dirichlet partitions")
    add_flags(
        sim,
        _RUN_KEYS,
        rounds={"default": None, "help": "federated rounds (default: 20 funnel, 10 emotion)"},
        local_epochs={"help": "local epochs per round (default: the model family's)"},
        compression={"help": "emotion update encoding"},
    )
    sim.add_argument(
        "--compare-dense",
        action="store_true",
        help="emotion: also run with dense fp32 updates to state the accuracy cost of compression",
    )
    add_flags(sim, ["seed"])
    sim.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    sim.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from federated.simulate import SimConfig, simulate  # numpy + flwr imports only when used

    task = FAMILIES.get(args.model).task
    cfg = SimConfig(
        model=args.model,
        data=args.data,
        eval=args.eval,
        partition=args.partition or task.simulation_partition,
        nodes=args.nodes,
        rounds=args.rounds or task.simulation_rounds,
        local_epochs=args.local_epochs,
        strategy=args.strategy,
        server_momentum=args.server_momentum,
        compression=args.compression,
        seed=args.seed,
        compare_dense=args.compare_dense,
    )
    report = simulate(cfg)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    metric = report["metric"]
    for arm in ("central", "federated", "local_only"):
        scores = report[arm]
        mean = scores.get("partition_mean")
        print(
            f"{arm:11s} {metric} pooled {scores['pooled']:.4f}"
            + (f"  partition mean {mean:.4f}" if mean is not None else "")
        )
    gap = report["gap"]
    print(
        f"gap        central - federated {gap['gap']:+.4f} ({metric}, {report['rounds']} rounds, {report['strategy']},"
        f" {report['local_epochs']} local epochs)"
    )
    b = report["bytes_per_update"]
    print(
        f"bytes per update: {b['mean']:.0f} ({b['compression']}), dense fp32 {b['dense_fp32']}, "
        f"{b['ratio']:.1f}x smaller; {report['seconds']}s"
    )
    return 0
