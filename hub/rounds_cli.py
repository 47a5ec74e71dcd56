"""``nexus hub rounds start|list|show|stop``: federated runs through the hub's HTTP API."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from hub.client import OperatorClient, resolve_token
from models.errors import NexusError
from models.families import FAMILIES
from nexus_wire.runconfig import API_FIELDS, add_flags, flag_values


def _client(args: argparse.Namespace) -> OperatorClient:
    return OperatorClient(args.hub, resolve_token(args.token, args.data_dir))


def _num(value: Any, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def run_table(run: dict[str, Any]) -> list[str]:
    """A run's header line and its per-round table."""
    score = run.get("score_name") or "score"
    lines = [
        f"run {run['run_id']} ({run['model']}, {run['config']['strategy']}, flower {run['flower_run_id']}): "
        f"{run['status']}"
        + (f" -> version {run['version']}" if run.get("version") else "")
        + (f" ({run['reason']})" if run.get("reason") else ""),
        f"{'ROUND':>5} {'NODES':>5} {'REJECTED':>8} {'LOSS':>8} {score.upper():>9} "
        f"{'BYTES_OUT':>10} {'BYTES_IN':>9} {'SECONDS':>8}",
    ]
    for r in run.get("rounds", []):
        lines.append(
            f"{r['round']:>5} {r['participants']:>5} {len(r.get('rejected', [])):>8} "
            f"{_num(r.get('loss')):>8} {_num(r.get('score')):>9} "
            f"{r.get('bytes_out', 0):>10} {r.get('bytes_in', 0):>9} {_num(r.get('duration_s'), '.1f'):>8}"
        )
    return lines


def _emit(args: argparse.Namespace, result: Any, table: list[str]) -> None:
    print(json.dumps(result) if args.json else "\n".join(table))


def _start(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.start_run(flag_values(args, API_FIELDS))
        if args.wait:
            run = client.wait_run(run["run_id"], show_progress=not args.json)
            _emit(args, run, run_table(run))
            if run["status"] != "finished":
                raise NexusError(f"run {run['run_id']} {run['status']}: {run.get('reason')}")
            return 0
    _emit(
        args,
        run,
        [
            f"run {run['run_id']} started (flower run {run['flower_run_id']}); "
            f"follow it with `nexus hub rounds show {run['run_id']}`"
        ],
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        runs = client.runs()
    rows = [f"{'RUN':<16} {'MODEL':<8} {'STATUS':<10} {'ROUNDS':>7} {'VERSION':>7}  REASON"]
    rows += [
        f"{r['run_id']:<16} {r['model']:<8} {r['status']:<10} "
        f"{str(r['rounds_done']) + '/' + str(r['config']['rounds']):>7} {r['version'] or '-':>7}  {r['reason'] or ''}"
        for r in runs
    ]
    _emit(args, runs, rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.run(args.run_id)
    _emit(args, run, run_table(run))
    return 0


def _stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.stop_run(args.run_id)
    _emit(args, run, [f"run {run['run_id']} {run['status']}"])
    return 0


def register(hsub: argparse._SubParsersAction, operator_args: Callable[[argparse.ArgumentParser], None]) -> None:
    rounds = hsub.add_parser("rounds", help="federated training runs on the edges' local data")
    rsub = rounds.add_subparsers(dest="rounds_command", required=True, metavar="ACTION")
    start = rsub.add_parser("start", help="start a run; the result is registered as a candidate version")
    # the hub checks the values (a 422 names the bad one)
    add_flags(start, API_FIELDS, model={"required": True, "choices": FAMILIES.names(), "metavar": None})
    start.add_argument(
        "--wait", action="store_true", help="show progress and wait for the end; exit 2 unless it finished"
    )
    start.set_defaults(func=_start)
    rlist = rsub.add_parser("list", help="runs, newest first")
    rlist.set_defaults(func=_list)
    show = rsub.add_parser("show", help="a run and its per-round metrics")
    show.add_argument("run_id")
    show.set_defaults(func=_show)
    stop = rsub.add_parser("stop", help="stop a run (nothing is registered)")
    stop.add_argument("run_id")
    stop.set_defaults(func=_stop)
    for parser in (start, rlist, show, stop):
        operator_args(parser)


#: Flower's conventional SuperLink port, which deploy/ uses too
DEFAULT_SUPERLINK_PORT = 9092


def add_serve_args(serve: argparse.ArgumentParser) -> None:
    """``nexus hub serve`` flags of the Flower SuperLink rounds run on."""
    serve.add_argument(
        "--superlink-port",
        type=int,
        default=DEFAULT_SUPERLINK_PORT,
        metavar="PORT",
        help="port of the Flower SuperLink the hub runs as its child for federated rounds "
        f"(default {DEFAULT_SUPERLINK_PORT})",
    )
    serve.add_argument("--no-superlink", action="store_true", help="run no SuperLink: no federated rounds on this hub")
    serve.add_argument("--superlink", metavar="HOST:PORT", help="use this external SuperLink instead of starting one")
    serve.add_argument("--superlink-root-cert", metavar="PATH", help="CA certificate of the external SuperLink's TLS")
    serve.add_argument(
        "--superlink-public", metavar="HOST:PORT", help="SuperLink address edges are told (default: what the hub uses)"
    )
    serve.add_argument(
        "--rounds-dir",
        metavar="PATH",
        help="run folders (base, summary, arrays): shared at the same path with an external SuperLink "
        "(default DATA_DIR/rounds)",
    )
    serve.add_argument(
        "--eval-data",
        action="append",
        metavar="MODEL=PATH",
        help="held-out file federated candidates of MODEL are evaluated on",
    )


def serve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The HubSettings fields those flags set."""
    eval_data = {}
    for item in args.eval_data or []:
        model, sep, path = item.partition("=")
        if not sep or model not in FAMILIES or not path:
            looks = " or ".join(f"{name}=PATH" for name in FAMILIES.names())
            raise NexusError(f"--eval-data {item!r} must look like {looks}")
        eval_data[model] = path
    return {
        "superlink_port": None if args.superlink or args.no_superlink else args.superlink_port,
        "superlink": args.superlink,
        "superlink_root_cert": args.superlink_root_cert,
        "superlink_public": args.superlink_public,
        "rounds_dir": args.rounds_dir,
        "eval_data": eval_data,
    }
