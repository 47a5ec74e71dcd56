"""``nexus hub rounds start|list|show|stop``: federated runs through the hub's HTTP API."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from hub.client import HubError, OperatorClient, resolve_token
from models.errors import NexusError
from models.progress import Progress

FINAL = ("finished", "failed", "stopped")


def _client(args: argparse.Namespace) -> OperatorClient:
    return OperatorClient(args.hub, resolve_token(args.token, args.data_dir))


def _num(value: Any, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def run_table(run: dict[str, Any]) -> list[str]:
    """A run's header line and its per-round table."""
    score = run.get("score_name") or "score"
    lines = [
        f"run {run['run_id']} ({run['model']}, {run['config']['strategy']}, flower {run['flower_run_id']}): {run['status']}"
        + (f" -> version {run['version']}" if run.get("version") else "")
        + (f" ({run['reason']})" if run.get("reason") else ""),
        f"{'ROUND':>5} {'NODES':>5} {'REJECTED':>8} {'LOSS':>8} {score.upper():>9} {'BYTES_OUT':>10} {'BYTES_IN':>9} {'SECONDS':>8}",
    ]
    for r in run.get("rounds", []):
        lines.append(
            f"{r['round']:>5} {r['participants']:>5} {len(r.get('rejected', [])):>8} {_num(r.get('loss')):>8} {_num(r.get('score')):>9} "
            f"{r.get('bytes_out', 0):>10} {r.get('bytes_in', 0):>9} {_num(r.get('duration_s'), '.1f'):>8}"
        )
    return lines


def _emit(args: argparse.Namespace, result: Any, table: list[str]) -> None:
    print(json.dumps(result) if args.json else "\n".join(table))


def _fetch(client: OperatorClient, run_id: str, patience_s: float) -> dict[str, Any]:
    """The run; while the hub cannot be reached (restarting) keep asking for ``patience_s``."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return client.run(run_id)
        except HubError:
            raise  # the hub answered: retrying will not change its mind
        except NexusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def wait(
    client: OperatorClient, run_id: str, poll_s: float = 2.0, show_progress: bool = True, patience_s: float = 120.0
) -> dict[str, Any]:
    """Poll until the run ends, showing rounds done on stderr; the final run with its rounds.

    A hub restart in the middle is waited out (the run survives it: see hub/rounds.py).
    """
    run = client.run(run_id)
    progress = Progress(f"run {run_id}", int(run["config"]["rounds"]), enabled=show_progress)
    done = 0
    while run["status"] not in FINAL:
        time.sleep(poll_s)
        run = _fetch(client, run_id, patience_s)
        if run["rounds_done"] > done:
            last = run["rounds"][-1] if run["rounds"] else {}
            progress.update(
                run["rounds_done"] - done,
                loss=last.get("loss") or 0.0,
                score=last.get("score") or 0.0,
                nodes=last.get("participants", 0),
            )
            done = run["rounds_done"]
    progress.close()
    return run


def _start(args: argparse.Namespace) -> int:
    body = {
        "model": args.model, "rounds": args.rounds, "strategy": args.strategy, "min_nodes": args.min_nodes,
        "fraction": args.fraction, "select": ";".join(args.select or []), "local_epochs": args.local_epochs,
        "timeout_s": args.timeout, "deadline_s": args.deadline,
    }  # fmt: skip
    with _client(args) as client:
        run = client.start_run(body)
        if args.wait:
            run = wait(client, run["run_id"], show_progress=not args.json)
            _emit(args, run, run_table(run))
            if run["status"] != "finished":
                raise NexusError(f"run {run['run_id']} {run['status']}: {run.get('reason')}")
            return 0
    _emit(
        args,
        run,
        [
            f"run {run['run_id']} started (flower run {run['flower_run_id']}); follow it with `nexus hub rounds show {run['run_id']}`"
        ],
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        runs = client.runs()
    rows = [f"{'RUN':<16} {'MODEL':<8} {'STATUS':<10} {'ROUNDS':>7} {'VERSION':>7}  REASON"]
    rows += [
        f"{r['run_id']:<16} {r['model']:<8} {r['status']:<10} {str(r['rounds_done']) + '/' + str(r['config']['rounds']):>7} {r['version'] or '-':>7}  {r['reason'] or ''}"
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
    start.add_argument("--model", required=True, choices=("funnel", "emotion"))
    start.add_argument("--rounds", type=int, default=3)
    start.add_argument(
        "--strategy", default="fedavg", choices=("fedavg", "fedprox", "fedadam", "fedtrimmedavg", "krum")
    )
    start.add_argument("--min-nodes", type=int, default=2, help="nodes a round needs (Flower waits for them)")
    start.add_argument(
        "--fraction", type=float, default=1.0, help="share of the online nodes asked to train each round"
    )
    start.add_argument("--select", action="append", help="node tags, e.g. region=1,2 (repeat for several tags)")
    start.add_argument("--local-epochs", type=int, default=1)
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the replies of one step")
    start.add_argument(
        "--deadline", type=float, default=1800.0, help="seconds the whole run may take before it is failed"
    )
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
        help=f"port of the Flower SuperLink the hub runs as its child for federated rounds (default {DEFAULT_SUPERLINK_PORT})",
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
        help="run folders (base, summary, arrays): shared at the same path with an external SuperLink (default DATA_DIR/rounds)",
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
        if not sep or model not in ("funnel", "emotion") or not path:
            raise NexusError(f"--eval-data {item!r} must look like funnel=PATH or emotion=PATH")
        eval_data[model] = path
    return {
        "superlink_port": None if args.superlink or args.no_superlink else args.superlink_port,
        "superlink": args.superlink,
        "superlink_root_cert": args.superlink_root_cert,
        "superlink_public": args.superlink_public,
        "rounds_dir": args.rounds_dir,
        "eval_data": eval_data,
    }
