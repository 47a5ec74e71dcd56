"""``nexus hub serve|token|nodes|models``.

Operator commands talk HTTP to a running hub with the admin token (never read the
store directly), so they work the same against one hub or a replica set.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hub import audit_heads, funnels_cli, rounds_cli
from hub.client import DEFAULT_URL, OperatorClient, resolve_token
from hub.settings import DEFAULT_PORT, HubSettings
from models.errors import NexusError
from nexus_wire.datadir import HubDataDir


def parse_tags(items: list[str] | None) -> dict[str, str]:
    """``["region=3", "tier=gold"]`` or ``["region=3,tier=gold"]`` -> dict."""
    tags: dict[str, str] = {}
    for item in items or []:
        for pair in filter(None, item.split(",")):
            key, sep, value = pair.partition("=")
            if not sep or not key or not value:
                raise NexusError(f"tag {pair!r} must look like key=value")
            tags[key.strip()] = value.strip()
    return tags


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub.app import create_app

    settings = HubSettings(
        data_dir=Path(args.data_dir),
        store=args.store,
        host=args.host,
        port=args.port,
        offline_after_s=args.offline_after,
        poll_interval_s=args.poll_interval,
        thompson_interval_s=args.thompson_interval,
        **rounds_cli.serve_settings(args),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    # The token itself is never printed: only where to read it.
    print(
        f"nexus hub on http://{settings.host}:{settings.port} store={settings.store_url()}"
        f" admin token in {HubDataDir(settings.data_dir).admin_token}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


def _client(args: argparse.Namespace) -> OperatorClient:
    return OperatorClient(args.hub, resolve_token(args.token, args.data_dir))


def _print(args: argparse.Namespace, result: Any, table: list[str] | None = None) -> None:
    if args.json or table is None:
        print(json.dumps(result, indent=None if args.json else 2))
    else:
        print("\n".join(table))


def _token_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.create_token(parse_tags(args.tags), args.ttl)
    # Printed because the operator asked for it; it is one-time and expires.
    _print(args, result, [result["token"]])
    return 0


def _nodes_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        nodes = client.nodes()
    rows = [f"{'NODE':<20} {'STATUS':<8} {'TAGS':<24} {'MODELS':<24} AUDIT"]
    for n in nodes:
        beat = n.get("heartbeat") or {}
        models = ",".join(f"{m}:{v}" for m, v in (beat.get("models") or {}).items())
        tags = ",".join(f"{k}={v}" for k, v in n["tags"].items())
        rows.append(f"{n['node_id']:<20} {n['status']:<8} {tags:<24} {models:<24} {_audit_column(beat)}")
    _print(args, nodes, rows)
    return 0


def _audit_column(beat: dict[str, Any]) -> str:
    """The node's audit head as the hub holds it; a regression first, it must not be missed."""
    regression = beat.get(audit_heads.REGRESSION)
    if regression:
        return "REGRESSION: " + audit_heads.describe(regression)
    head = beat.get(audit_heads.HEAD)
    return audit_heads.short(head) if head else "-"


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        action = args.models_command
        if action == "push":
            _print(args, client.push(Path(args.bundle_dir)))
        elif action == "list":
            models = client.models()
            rows = [f"{'MODEL':<16} {'STABLE':<8} {'CANARY':<12} VERSIONS"]
            rows += [
                f"{m['model']:<16} {m['stable'] or '-':<8} {','.join(m['canary']) or '-':<12} {','.join(m['versions'])}"
                for m in models
            ]
            _print(args, models, rows)
        elif action == "show":
            _print(args, client.show(args.model))
        elif action == "promote":
            _print(args, client.promote(args.model, args.version, args.stage, args.percent))
        elif action == "assign":
            _print(args, client.assign(args.model, args.version, parse_tags(args.select), args.percent))
        elif action == "rollback":
            _print(args, client.rollback(args.model))
    return 0


def _operator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", default=DEFAULT_URL, help=f"hub URL (default {DEFAULT_URL})")
    parser.add_argument("--token", help="admin token (default: $NEXUS_HUB_TOKEN, then DATA_DIR/admin.token)")
    parser.add_argument("--data-dir", help="the hub's data dir, to read its admin token")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="run the hub and manage nodes, tokens and the model registry")
    hsub = hub.add_subparsers(dest="hub_command", required=True, metavar="ACTION")

    serve = hsub.add_parser("serve", help="run the hub")
    serve.add_argument("--data-dir", required=True, help="keys, admin token and the default SQLite store")
    serve.add_argument("--store", help="sqlite:///PATH (default: DATA_DIR/hub.sqlite3) or redis://HOST:PORT/DB")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument(
        "--offline-after", type=float, default=30.0, help="seconds of silence before a node shows offline"
    )
    serve.add_argument("--poll-interval", type=float, default=5.0, help="heartbeat/poll interval asked of edges (s)")
    serve.add_argument(
        "--thompson-interval",
        type=float,
        default=60.0,
        help="seconds between Thompson weight updates of running experiments",
    )
    rounds_cli.add_serve_args(serve)
    serve.set_defaults(func=_serve)

    token = hsub.add_parser("token", help="enrollment tokens")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="make a one-time enrollment token")
    create.add_argument("--tags", action="append", help="key=value[,key=value] given to the node that enrolls")
    create.add_argument("--ttl", type=float, help="seconds until the token expires (default one day)")
    _operator_args(create)
    create.set_defaults(func=_token_create)

    nodes = hsub.add_parser("nodes", help="enrolled nodes")
    nsub = nodes.add_subparsers(dest="nodes_command", required=True, metavar="ACTION")
    nlist = nsub.add_parser("list", help="nodes with status, tags and loaded models")
    _operator_args(nlist)
    nlist.set_defaults(func=_nodes_list)

    models = hsub.add_parser("models", help="model registry and rollout")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    push = msub.add_parser("push", help="upload a bundle dir; the hub verifies, versions and signs it")
    push.add_argument("bundle_dir")
    mlist = msub.add_parser("list", help="models with stable and canary versions")
    show = msub.add_parser("show", help="versions, stages and rollout history of a model")
    show.add_argument("model")
    promote = msub.add_parser("promote", help="make a version canary (a share of all nodes) or stable (all nodes)")
    promote.add_argument("model")
    promote.add_argument("version")
    promote.add_argument("--stage", required=True, choices=("canary", "stable"))
    promote.add_argument("--percent", type=int, help="canary share of nodes, 1..100 (default 10)")
    assign = msub.add_parser("assign", help="send a version to the nodes whose tags match")
    assign.add_argument("model")
    assign.add_argument("version")
    assign.add_argument("--select", action="append", help="key=value[,key=value] the node's tags must have")
    assign.add_argument("--percent", type=int, default=100, help="share of the matching nodes, 1..100")
    rollback = msub.add_parser("rollback", help="undo the newest promote or assign of a model")
    rollback.add_argument("model")
    for parser in (push, mlist, show, promote, assign, rollback):
        _operator_args(parser)
        parser.set_defaults(func=_models)
    funnels_cli.register(hsub, _operator_args)
    rounds_cli.register(hsub, _operator_args)
