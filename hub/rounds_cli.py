"""``nexus hub rounds start|list|show|stop``: federated runs through the hub's HTTP API."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hub.client import OperatorClient, resolve_token
from models.errors import NexusError
from models.families import FAMILIES
from models.output import Table, View, emit
from nexus_wire.runconfig import API_FIELDS, add_flags, flag_values


def _client(args: argparse.Namespace) -> OperatorClient:
    return OperatorClient(args.hub, resolve_token(args.token, args.data_dir))


def run_views(run: dict[str, Any]) -> list[View]:
    """A run's header line and its per-round table."""
    score = run.get("score_name") or "score"
    header = (
        f"run {run['run_id']} ({run['model']}, {run['config']['strategy']}, "
        + ("secure aggregation, " if run["config"].get("secure_aggregation") else "")
        + f"flower {run['flower_run_id']}): "
        f"{run['status']}"
        + (f" -> version {run['version']}" if run.get("version") else "")
        + (f" ({run['reason']})" if run.get("reason") else "")
    )
    rounds = Table(
        ["ROUND", "NODES", "FAILED", "REJECTED", "LOSS", score.upper(), "BYTES_OUT", "BYTES_IN", "SECONDS"],
        [
            [
                r["round"],
                r["participants"],
                r.get("train_failures", 0),
                len(r.get("rejected", [])),
                _fixed(r.get("loss"), 4),
                _fixed(r.get("score"), 4),
                r.get("bytes_out", 0),
                r.get("bytes_in", 0),
                _fixed(r.get("duration_s"), 1),
            ]
            for r in run.get("rounds", [])
        ],
    )
    participants = run.get("participants") or []
    nodes = f"participants: {', '.join(str(n) for n in participants) if participants else '-'}"
    views: list[View] = [header, nodes, rounds]
    failures = [(r["round"], f) for r in run.get("rounds", []) for f in r.get("failures", [])]
    if failures:  # why each node took no part (nexus_wire/outcomes.py): its error reply, or no reply
        views.append(
            Table(
                ["ROUND", "NODE", "STEP", "KIND", "REASON"],
                [[n, f.get("node"), f.get("step"), f.get("kind"), f.get("reason")] for n, f in failures],
            )
        )
    gate = gate_line(run)
    if gate is not None:
        views.append(gate)
    return views


def gate_line(run: dict[str, Any]) -> str | None:
    """The promotion gate's comparison of the run's last round, or None when it has none."""
    verdict = run.get("gate")
    if not verdict:
        return None
    score = run.get("score_name") or "score"
    return (
        f"promotion gate ({score}, round {verdict['round']}, {verdict['nodes']} node(s)): candidate "
        f"{verdict['candidate']:.4f} vs stable v{verdict['baseline_version']} {verdict['baseline']:.4f} "
        f"({verdict['delta']:+.4f}): {verdict['verdict']}"
    )


def _fixed(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{float(value):.{digits}f}"


def _start(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.start_run(flag_values(args, API_FIELDS))
        if args.wait:
            run = client.wait_run(run["run_id"], show_progress=not args.json)
            emit(run, args.json, *run_views(run))
            if run["status"] != "finished":
                raise NexusError(f"run {run['run_id']} {run['status']}: {run.get('reason')}")
            return 0
    emit(
        run,
        args.json,
        _runs_table([run]),
        f"follow it with `nexus hub rounds show {run['run_id']}`",
    )
    return 0


def _runs_table(runs: list[dict[str, Any]]) -> Table:
    return Table(
        ["RUN", "MODEL", "STATUS", "ROUNDS", "FLOWER RUN", "VERSION", "REASON"],
        [
            [
                r["run_id"],
                r["model"],
                r["status"],
                f"{r.get('rounds_done', 0)}/{r['config']['rounds']}",
                r.get("flower_run_id"),
                r.get("version"),
                r.get("reason"),
            ]
            for r in runs
        ],
    )


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        runs = client.runs()
    emit(runs, args.json, _runs_table(runs))
    return 0


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.run(args.run_id)
    emit(run, args.json, *run_views(run))
    return 0


def _stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        run = client.stop_run(args.run_id)
    emit(run, args.json, _runs_table([run]))
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
    show.add_argument("run_id", help="the hub's run id (r-..., see `rounds list`)")
    show.set_defaults(func=_show)
    stop = rsub.add_parser("stop", help="stop a run (nothing is registered)")
    stop.add_argument("run_id", help="the hub's run id (r-..., see `rounds list`)")
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
        help="port SuperNodes join the hub's own Flower SuperLink on (its Fleet gateway, on --host; the "
        f"SuperLink itself listens on 127.0.0.1 only) (default {DEFAULT_SUPERLINK_PORT})",
    )
    for flag, what in (("ca-certfile", "CA"), ("certfile", "certificate"), ("keyfile", "private key")):
        serve.add_argument(
            f"--superlink-ssl-{flag}",
            metavar="PATH",
            help=f"TLS {what} of that port, given with the other two (default: none, plain HTTP)",
        )
    serve.add_argument(
        "--superlink-supernode-auth",
        action="store_true",
        help="admit only SuperNodes whose key was registered with `flwr supernode register` (needs TLS; default: any)",
    )
    serve.add_argument("--no-superlink", action="store_true", help="run no SuperLink: no federated rounds on this hub")
    serve.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="use this external SuperLink instead of starting one (default: start one)",
    )
    serve.add_argument(
        "--superlink-root-cert",
        metavar="PATH",
        help="CA certificate of the external SuperLink's TLS (default: none, loopback only)",
    )
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
        help="held-out file federated candidates of MODEL are evaluated on (default: none; repeat per model)",
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
    tls = (args.superlink_ssl_ca_certfile, args.superlink_ssl_certfile, args.superlink_ssl_keyfile)
    if any(tls) and not all(tls):
        raise NexusError("the three --superlink-ssl-* files (CA, certificate, key) go together")
    if args.superlink_supernode_auth and not all(tls):
        raise NexusError("--superlink-supernode-auth needs the --superlink-ssl-* files (Flower requires TLS for it)")
    return {
        "superlink_port": None if args.superlink or args.no_superlink else args.superlink_port,
        "superlink_ssl_ca_certfile": args.superlink_ssl_ca_certfile,
        "superlink_ssl_certfile": args.superlink_ssl_certfile,
        "superlink_ssl_keyfile": args.superlink_ssl_keyfile,
        "superlink_supernode_auth": args.superlink_supernode_auth,
        "superlink": args.superlink,
        "superlink_root_cert": args.superlink_root_cert,
        "superlink_public": args.superlink_public,
        "rounds_dir": args.rounds_dir,
        "eval_data": eval_data,
    }
