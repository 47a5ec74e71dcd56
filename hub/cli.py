"""``nexus hub serve|token|nodes|models``.

Operator commands talk HTTP to a running hub with the admin token (never read the
store directly), so they work the same against one hub or a replica set.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hub import cli_tables, flower_login, funnels_cli, rounds_cli
from hub.auth import load_or_create_admin_token
from hub.client import DEFAULT_URL, OperatorClient, resolve_token
from hub.settings import DEFAULT_PORT, HubSettings
from models.errors import NexusError
from models.output import emit
from nexus_service.keyfiles import PRIVATE_UMASK, load_or_create_key, private_dir
from nexus_service.serving import ServerLimits, uvicorn_options
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


def _rate_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The HubSettings fields of --auth-failure-limit and --enroll-failure-limit, when given."""
    fields: dict[str, Any] = {}
    for flag, name in ((args.auth_failure_limit, "auth_failure"), (args.enroll_failure_limit, "enroll_failure")):
        if flag is not None:
            fields[f"{name}_burst"], fields[f"{name}_per_s"] = int(flag[0]), flag[1]
    return fields


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub.app import create_app

    settings = HubSettings(
        data_dir=Path(args.data_dir),
        store=args.store,
        blobs=args.blobs,
        host=args.host,
        port=args.port,
        offline_after_s=args.offline_after,
        poll_interval_s=args.poll_interval,
        thompson_interval_s=args.thompson_interval,
        body_deadline_s=args.body_deadline,
        max_connections=args.max_connections,
        max_upload_bytes=args.max_upload_bytes,
        advertise_url=args.advertise_url,
        lease_ttl_s=args.lease_ttl,
        **_rate_limits(args),
        **rounds_cli.serve_settings(args),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.umask(PRIVATE_UMASK)  # every file the hub, its SuperLink and ServerApps create
    app = create_app(settings)
    # The token itself is never printed: only where to read it.
    print(
        f"nexus hub on http://{settings.host}:{settings.port} store={settings.store_url()}"
        f" admin token in {HubDataDir(settings.data_dir).admin_token}",
        file=sys.stderr,
        flush=True,
    )
    limits = ServerLimits(
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        body_deadline_s=settings.body_deadline_s,
        body_memory_bytes=2 * settings.max_upload_bytes,  # two bundle uploads at once
    )
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="warning", access_log=False, **uvicorn_options(limits)
    )
    return 0


def _init(args: argparse.Namespace) -> int:
    """Make a data dir's signing key and admin token (what every replica of one store shares)."""
    os.umask(PRIVATE_UMASK)
    layout = HubDataDir(private_dir(Path(args.data_dir)))
    load_or_create_key(layout.signing_key)
    load_or_create_admin_token(layout.root)
    result = {"signing_key": str(layout.signing_key), "admin_token": str(layout.admin_token)}
    emit(result, args.json, f"signing key {layout.signing_key}, admin token {layout.admin_token}")
    return 0


def _client(args: argparse.Namespace) -> OperatorClient:
    return OperatorClient(args.hub, resolve_token(args.token, args.data_dir))


def _token_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.create_token(parse_tags(args.tags), args.ttl)
    # The token alone, so `> token.txt` makes the file `edge serve --enroll-token-file` reads.
    # Printed because the operator asked for it; it is one-time and expires.
    emit(result, args.json, result["token"])
    return 0


def _token_rotate_admin(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.rotate_admin()
    # the hub wrote the new token to its own data dir; printed only when asked (--json), as
    # the operator may be on another host (NEXUS_HUB_TOKEN or --token must change too)
    emit(result, args.json, f"admin token rotated; the new one is in {result['file']} on the hub's host")
    return 0


def _nodes_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        node = client.revoke_node(args.node_id)
    emit(node, args.json, cli_tables.nodes_table([node]))
    return 0


def _nodes_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        nodes = client.nodes()
    emit(nodes, args.json, cli_tables.nodes_table(nodes))
    return 0


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        action = args.models_command
        if action == "push":
            pushed = client.push(Path(args.bundle_dir))
            emit(pushed, args.json, cli_tables.push_table(pushed))
        elif action == "list":
            models = client.models()
            emit(models, args.json, cli_tables.models_table(models))
        elif action == "show":
            shown = client.show(args.model)
            emit(shown, args.json, *cli_tables.model_views(shown))
        elif action == "promote":
            done = client.promote(args.model, args.version, args.stage, args.percent, args.force)
            emit(done, args.json, *cli_tables.gate_lines(args.model, done), cli_tables.action_table(done))
        elif action == "assign":
            done = client.assign(args.model, args.version, parse_tags(args.select), args.percent)
            emit(done, args.json, cli_tables.action_table(done))
        elif action == "rollback":
            done = client.rollback(args.model)
            emit(done, args.json, "rolled back:", cli_tables.action_table(done["rolled_back"]))
    return 0


def _operator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", default=DEFAULT_URL, help=f"hub URL (default {DEFAULT_URL})")
    parser.add_argument("--token", help="admin token (default: $NEXUS_HUB_TOKEN, then DATA_DIR/admin.token)")
    parser.add_argument(
        "--data-dir", help="the hub's data dir: read the admin token from it (default: none; see --token)"
    )
    parser.add_argument("--json", action="store_true", help="print the hub's answer as one line of JSON, not a table")


def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="run the hub and manage nodes, tokens and the model registry")
    hsub = hub.add_subparsers(dest="hub_command", required=True, metavar="ACTION")

    init = hsub.add_parser(
        "init", help="make a data dir's signing key and admin token, and exit (replicas share them: docs/deploy.md)"
    )
    init.add_argument("--data-dir", required=True, help="the data dir to make them in (kept when they exist)")
    init.add_argument("--json", action="store_true", help="print the two paths as one line of JSON")
    init.set_defaults(func=_init)

    serve = hsub.add_parser("serve", help="run the hub")
    serve.add_argument("--data-dir", required=True, help="keys, admin token and the default SQLite store")
    serve.add_argument("--store", help="sqlite:///PATH (default: DATA_DIR/hub.sqlite3) or redis://HOST:PORT/DB")
    serve.add_argument(
        "--blobs",
        metavar="URL",
        help="where bundle archives go: file:///PATH (default: DATA_DIR/blobs) or "
        "s3://BUCKET/PREFIX?endpoint_url=URL (replicas on several hosts; credentials from the AWS_* environment)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="bind address of the HTTP API and the dashboard")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the HTTP API and the dashboard")
    serve.add_argument(
        "--offline-after", type=float, default=30.0, help="seconds of silence before a node shows offline"
    )
    serve.add_argument("--poll-interval", type=float, default=5.0, help="heartbeat/poll interval asked of edges (s)")
    serve.add_argument(
        "--body-deadline", type=float, default=60.0, help="seconds a client has to send a request body (408 beyond)"
    )
    serve.add_argument(
        "--max-connections", type=int, default=256, help="open connections at once (503 + Retry-After beyond)"
    )
    serve.add_argument(
        "--max-upload-bytes",
        type=int,
        default=64 << 20,
        help="largest bundle push, archive and its extracted files alike (default 64 MiB)",
    )
    serve.add_argument(
        "--thompson-interval",
        type=float,
        default=60.0,
        help="seconds between Thompson weight updates of running experiments",
    )
    serve.add_argument(
        "--auth-failure-limit",
        nargs=2,
        type=float,
        metavar=("BURST", "PER_S"),
        help="wrong credentials (API bearer tokens, dashboard login) per client address: BURST at once, "
        "then PER_S a second; beyond it 429 (default 10 0.5)",
    )
    serve.add_argument(
        "--enroll-failure-limit",
        nargs=2,
        type=float,
        metavar=("BURST", "PER_S"),
        help="enrollments with a bad token per client address, the same way (default 20 1)",
    )
    serve.add_argument(
        "--advertise-url",
        metavar="URL",
        help="where the other replicas of this store reach this one: they forward round commands to the "
        "replica that drives rounds (default http://HOST:PORT, this host's address for a wildcard --host)",
    )
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long the rounds driver's lease lasts unless renewed: the longest the replicas go without "
        "a driver after one dies elsewhere (default 15)",
    )
    rounds_cli.add_serve_args(serve)
    serve.set_defaults(func=_serve)

    token = hsub.add_parser("token", help="enrollment tokens")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="make a one-time enrollment token (printed alone: `> token.txt`)")
    create.add_argument(
        "--tags", action="append", help="key=value[,key=value] given to the node that enrolls (default: no tags)"
    )
    create.add_argument("--ttl", type=float, help="seconds until the token expires (default one day)")
    _operator_args(create)
    create.set_defaults(func=_token_create)
    rotate = tsub.add_parser(
        "rotate-admin",
        help="replace the running hub's admin token (the old one is refused at once; sessions end)",
    )
    _operator_args(rotate)
    rotate.set_defaults(func=_token_rotate_admin)

    nodes = hsub.add_parser("nodes", help="enrolled nodes")
    nsub = nodes.add_subparsers(dest="nodes_command", required=True, metavar="ACTION")
    nlist = nsub.add_parser("list", help="nodes with status, tags and loaded models")
    _operator_args(nlist)
    nlist.set_defaults(func=_nodes_list)
    revoke = nsub.add_parser("revoke", help="end a node's credential: its next request is 401 (enroll it anew)")
    revoke.add_argument("node_id", metavar="NODE", help="the node's id (see `nodes list`)")
    _operator_args(revoke)
    revoke.set_defaults(func=_nodes_revoke)

    models = hsub.add_parser("models", help="model registry and rollout")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    push = msub.add_parser("push", help="upload a bundle dir; the hub verifies, versions and signs it")
    push.add_argument("bundle_dir", help="a bundle folder <model>/<version>/ (e.g. models/bundles/funnel/1)")
    mlist = msub.add_parser("list", help="models with stable and canary versions")
    show = msub.add_parser("show", help="versions, stages and rollout history of a model (--json: everything)")
    show.add_argument("model", help="model name")
    promote = msub.add_parser("promote", help="make a version canary (a share of all nodes) or stable (all nodes)")
    promote.add_argument("model", help="model name")
    promote.add_argument("version", help="a version the hub holds (see `models show`)")
    promote.add_argument(
        "--stage", required=True, choices=("canary", "stable"), help="canary: a share of all nodes; stable: every node"
    )
    promote.add_argument("--percent", type=int, help="canary share of nodes, 1..100 (default 10)")
    promote.add_argument(
        "--force",
        action="store_true",
        help="promote a federated candidate the promotion gate found worse than the stable version",
    )
    assign = msub.add_parser("assign", help="send a version to the nodes whose tags match")
    assign.add_argument("model", help="model name")
    assign.add_argument("version", help="a version the hub holds (see `models show`)")
    assign.add_argument(
        "--select", action="append", help="key=value[,key=value] the node's tags must have (default: every node)"
    )
    assign.add_argument("--percent", type=int, default=100, help="share of the matching nodes, 1..100")
    rollback = msub.add_parser("rollback", help="undo the newest promote or assign of a model")
    rollback.add_argument("model", help="model name")
    for parser in (push, mlist, show, promote, assign, rollback):
        _operator_args(parser)
        parser.set_defaults(func=_models)
    funnels_cli.register(hsub, _operator_args)
    rounds_cli.register(hsub, _operator_args)
    flower_login.register(hsub)
