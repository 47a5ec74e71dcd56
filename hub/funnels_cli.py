"""``nexus hub funnels create|list|show`` and ``nexus hub experiments create|start|stop|results``;
registered from hub/cli.py.

Like the other operator commands they talk HTTP to a running hub with the admin token.
"""

from __future__ import annotations

import argparse
from typing import Any

from hub.bayes import withheld_rule
from hub.client import FunnelClient, resolve_token
from models.errors import NexusError
from models.output import Table, View, emit


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


def _experiments_table(experiments: list[dict[str, Any]]) -> Table:
    return Table(
        ["EXPERIMENT", "FUNNEL", "STATUS", "ALLOC", "VER", "DECISION STEP", "SHARES"],
        [
            [
                e["id"],
                e["funnel_id"],
                e["status"],
                e["allocation"],
                e["version"],
                e["decision_step"],
                ",".join(f"{v['name']}={v['share']:.2f}" for v in e["variants"]),
            ]
            for e in experiments
        ],
    )


def _funnels_table(funnels: list[dict[str, Any]]) -> Table:
    return Table(["FUNNEL", "STEPS"], [[f["id"], " > ".join(f["steps"])] for f in funnels])


def _rounded(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def withheld_note(min_group_size: int, noise_scale: float) -> str:
    """What a ``-`` in the results means."""
    note = "- = withheld: " + withheld_rule(min_group_size)
    return note + (f"; counts carry Laplace noise of scale {noise_scale}" if noise_scale else "")


def results_views(r: dict[str, Any]) -> list[View]:
    header = (
        f"experiment {r['experiment_id']} ({r['status']}, {r['allocation']})"
        f" control {r['control']}, decision step {r['decision_step']}"
    )
    rows = []
    for v in r["variants"]:
        for s in v["steps"]:
            ci = None if s["ci_low"] is None else f"{s['ci_low']:.3f}-{s['ci_high']:.3f}"
            rows.append(
                [
                    v["name"],
                    s["step"],
                    s["reached"],
                    v["assigned"],
                    _rounded(s["rate"]),
                    ci,
                    _rounded(s["prob_beat_control"]),
                    _rounded(s["expected_loss"], 4),
                ]
            )
    table = Table(["VARIANT", "STEP", "REACHED", "ASSIGNED", "RATE", "95% CI", "P(BEAT)", "LOSS"], rows)
    srm = r["srm"]
    srm_line = "SRM: n/a" if srm is None else f"SRM: p={srm['p_value']:.3g}{' MISMATCH' if srm['mismatch'] else ''}"
    return [header, table, srm_line, withheld_note(r["min_group_size"], r["noise_scale"])]


def _run(args: argparse.Namespace) -> int:
    with FunnelClient(args.hub, resolve_token(args.token, args.data_dir)) as client:
        result, views = _dispatch(client, args)
    emit(result, args.json, *views)
    return 0


def _dispatch(client: FunnelClient, args: argparse.Namespace) -> tuple[Any, list[View]]:
    action = f"{args.hub_command}.{args.action}"
    if action == "funnels.create":
        funnel = client.create_funnel(args.id, [s.strip() for s in args.steps.split(",") if s.strip()])
        return funnel, [_funnels_table([funnel])]
    if action == "funnels.list":
        funnels = client.funnels()
        return funnels, [_funnels_table(funnels)]
    if action == "funnels.show":
        funnel = client.funnel(args.id)
        return funnel, [_funnels_table([funnel]), "", _experiments_table(funnel.get("experiments", []))]
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
        experiment = client.create_experiment(body)
        return experiment, [_experiments_table([experiment])]
    if action == "experiments.list":
        experiments = client.experiments()
        return experiments, [_experiments_table(experiments)]
    if action in ("experiments.start", "experiments.stop"):
        experiment = client.start(args.id) if args.action == "start" else client.stop(args.id)
        return experiment, [_experiments_table([experiment])]
    results = client.results(args.id)
    return results, results_views(results)


def register(hsub: argparse._SubParsersAction, operator_args: Any) -> None:
    """Add ``funnels`` and ``experiments`` under ``nexus hub``; ``operator_args`` adds --hub/--token/--json."""
    funnels = hsub.add_parser("funnels", help="funnels: ordered steps that experiments count")
    fsub = funnels.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = fsub.add_parser("create", help="define a funnel (immutable once created)")
    create.add_argument("id", help="funnel id, e.g. shop")
    create.add_argument("--steps", required=True, help="ordered step names, comma separated, e.g. view,cart,buy")
    show = fsub.add_parser("show", help="a funnel and its experiments")
    show.add_argument("id", help="funnel id")
    parsers = [create, fsub.add_parser("list", help="all funnels"), show]

    experiments = hsub.add_parser("experiments", help="A/B and bandit experiments on a funnel")
    esub = experiments.add_subparsers(dest="action", required=True, metavar="ACTION")
    ecreate = esub.add_parser("create", help="define an experiment (draft); the first variant is the control")
    ecreate.add_argument("id", help="experiment id, e.g. checkout")
    ecreate.add_argument("--funnel", required=True, help="the funnel whose steps it counts")
    ecreate.add_argument("--variants", required=True, help="NAME[=WEIGHT],... e.g. A=1,B=1")
    ecreate.add_argument("--decision-step", required=True, help="the funnel step results and Thompson decide on")
    ecreate.add_argument(
        "--allocation",
        choices=("fixed", "thompson"),
        default="fixed",
        help="fixed: the weights as given; thompson: the hub moves them toward the better variant",
    )
    ecreate.add_argument("--salt", help="re-shuffles visitors (use a new one to re-run an experiment) (default: none)")
    parsers += [ecreate, esub.add_parser("list", help="all experiments with status and current shares")]
    for name, text in (
        ("start", "start assigning on every edge"),
        ("stop", "stop assigning; counts stay final"),
        ("results", "conversion, credible intervals, P(beat control), expected loss, SRM"),
    ):
        parser = esub.add_parser(name, help=text)
        parser.add_argument("id", help="experiment id")
        parsers.append(parser)
    for parser in parsers:
        operator_args(parser)
        parser.set_defaults(func=_run)
