"""``nexus hub funnels create|list|show`` and ``nexus hub experiments create|start|stop|results``;
registered from hub/cli.py.

Like the other operator commands they talk HTTP to a running hub with the admin token.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hub.client import FunnelClient, resolve_token
from models.errors import NexusError


def parse_variants(text: str) -> list[dict[str, Any]]:
    """``"A=1,B=1"`` or ``"A,B"`` (equal weights) -> ``[{"name", "weight"}]``; the first is the control."""
    variants = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        try:
            variants.append({"name": name.strip(), "weight": float(weight) if sep else 1.0})
        except ValueError:
            raise NexusError(f"variant {part!r} must look like NAME or NAME=WEIGHT") from None
    return variants


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def _experiment_row(e: dict[str, Any]) -> str:
    weights = ",".join(f"{v['name']}={v['share']:.2f}" for v in e["variants"])
    return f"{e['id']:<20} {e['funnel_id']:<12} {e['status']:<8} {e['allocation']:<9} {e['version']:>4}  {weights}"


def results_table(r: dict[str, Any]) -> list[str]:
    rows = [
        f"experiment {r['experiment_id']} ({r['status']}, {r['allocation']})"
        f" control {r['control']}, decision step {r['decision_step']}"
    ]
    rows.append(
        f"{'VARIANT':<10} {'STEP':<12} {'REACHED':>8} {'ASSIGNED':>8} {'RATE':>7}"
        f" {'95% CI':>15} {'P(BEAT)':>8} {'LOSS':>8}"
    )
    for v in r["variants"]:
        for s in v["steps"]:
            ci = "-" if s["ci_low"] is None else f"{s['ci_low']:.3f}-{s['ci_high']:.3f}"
            assigned = "-" if v["assigned"] is None else str(v["assigned"])
            reached = "-" if s["reached"] is None else str(s["reached"])
            rows.append(
                f"{v['name']:<10} {s['step']:<12} {reached:>8} {assigned:>8} {_fmt(s['rate']):>7} {ci:>15} "
                f"{_fmt(s['prob_beat_control']):>8} {_fmt(s['expected_loss'], '{:.4f}'):>8}"
            )
    srm = r["srm"]
    rows.append("SRM: n/a" if srm is None else f"SRM: p={srm['p_value']:.3g}{' MISMATCH' if srm['mismatch'] else ''}")
    rows.append(f"counts below {r['min_group_size']} withheld (-), noise scale {r['noise_scale']}")
    return rows


def _run(args: argparse.Namespace) -> int:
    with FunnelClient(args.hub, resolve_token(args.token, args.data_dir)) as client:
        result, table = _dispatch(client, args)
    print(json.dumps(result, indent=None if args.json else 2) if args.json or table is None else "\n".join(table))
    return 0


def _dispatch(client: FunnelClient, args: argparse.Namespace) -> tuple[Any, list[str] | None]:
    action = f"{args.hub_command}.{args.action}"
    if action == "funnels.create":
        return client.create_funnel(args.id, [s.strip() for s in args.steps.split(",") if s.strip()]), None
    if action == "funnels.list":
        funnels = client.funnels()
        return funnels, [f"{'FUNNEL':<20} STEPS"] + [f"{f['id']:<20} {' > '.join(f['steps'])}" for f in funnels]
    if action == "funnels.show":
        return client.funnel(args.id), None
    if action == "experiments.create":
        body = {
            "id": args.id,
            "funnel_id": args.funnel,
            "variants": parse_variants(args.variants),
            "decision_step": args.decision_step,
            "allocation": args.allocation,
        }
        if args.salt:
            body["salt"] = args.salt
        return client.create_experiment(body), None
    if action == "experiments.list":
        experiments = client.experiments()
        header = f"{'EXPERIMENT':<20} {'FUNNEL':<12} {'STATUS':<8} {'ALLOC':<9} {'VER':>4}  SHARES"
        return experiments, [header] + [_experiment_row(e) for e in experiments]
    if action == "experiments.start":
        return client.start(args.id), None
    if action == "experiments.stop":
        return client.stop(args.id), None
    results = client.results(args.id)
    return results, results_table(results)


def register(hsub: argparse._SubParsersAction, operator_args: Any) -> None:
    """Add ``funnels`` and ``experiments`` under ``nexus hub``; ``operator_args`` adds --hub/--token/--json."""
    funnels = hsub.add_parser("funnels", help="funnels: ordered steps that experiments count")
    fsub = funnels.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = fsub.add_parser("create", help="define a funnel (immutable once created)")
    create.add_argument("id")
    create.add_argument("--steps", required=True, help="ordered step names, comma separated, e.g. view,cart,buy")
    show = fsub.add_parser("show", help="a funnel and its experiments")
    show.add_argument("id")
    parsers = [create, fsub.add_parser("list", help="all funnels"), show]

    experiments = hsub.add_parser("experiments", help="A/B and bandit experiments on a funnel")
    esub = experiments.add_subparsers(dest="action", required=True, metavar="ACTION")
    ecreate = esub.add_parser("create", help="define an experiment (draft); the first variant is the control")
    ecreate.add_argument("id")
    ecreate.add_argument("--funnel", required=True)
    ecreate.add_argument("--variants", required=True, help="NAME[=WEIGHT],... e.g. A=1,B=1")
    ecreate.add_argument("--decision-step", required=True, help="the funnel step results and Thompson decide on")
    ecreate.add_argument("--allocation", choices=("fixed", "thompson"), default="fixed")
    ecreate.add_argument("--salt", help="re-shuffles visitors (use a new one to re-run an experiment)")
    parsers += [ecreate, esub.add_parser("list", help="all experiments with status and current shares")]
    for name, text in (
        ("start", "start assigning on every edge"),
        ("stop", "stop assigning; counts stay final"),
        ("results", "conversion, credible intervals, P(beat control), expected loss, SRM"),
    ):
        parser = esub.add_parser(name, help=text)
        parser.add_argument("id")
        parsers.append(parser)
    for parser in parsers:
        operator_args(parser)
        parser.set_defaults(func=_run)
