"""``nexus edge serve``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edge_worker.metrics import reset_metrics_dir
from edge_worker.server import run_uvicorn
from edge_worker.settings import EdgeSettings

APP_FACTORY = "edge_worker.app:create_app_from_env"


def _serve(args: argparse.Namespace) -> int:
    settings = EdgeSettings.from_env(
        models_dir=args.models,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        workers=args.workers,
        hub_url=args.hub,
        enroll_token=args.enroll_token,
        enroll_token_file=args.enroll_token_file,
        supernode=False if args.no_supernode else None,
        superlink=args.superlink,
        supernode_port=args.supernode_port,
    )
    # Worker processes rebuild the settings from the environment (see EdgeSettings.from_env).
    os.environ.update(settings.to_env())
    reset_metrics_dir(settings.data_dir)  # before any worker: a new run's counters start at zero
    run_uvicorn(APP_FACTORY, settings.host, settings.port, settings.workers, args.log_level)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    edge = sub.add_parser("edge", help="run an edge inference node")
    esub = edge.add_subparsers(dest="edge_command", required=True, metavar="ACTION")
    serve = esub.add_parser(
        "serve",
        help="serve the models over HTTP",
        description="Serve the emotion and funnel models. Every setting also reads NEXUS_<NAME> "
        "(e.g. NEXUS_EMOTION_BACKEND=tflite, NEXUS_MAX_BATCH=64, NEXUS_BATCHING=false); arguments win.",
    )
    serve.add_argument("--models", type=Path, help="model repository <model>/<version>/ (default: the shipped bundles)")
    serve.add_argument("--data-dir", type=Path, help="local store folder (default: $XDG_DATA_HOME/nexus-edge)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="server processes (default 1)")
    serve.add_argument("--hub", help="hub URL: sync models and counters with it (default: standalone)")
    serve.add_argument(
        "--enroll-token", help="the hub's one-time enrollment token (used once; the node then keeps its identity)"
    )
    serve.add_argument("--enroll-token-file", type=Path, help="file holding the hub's one-time enrollment token")
    serve.add_argument(
        "--no-supernode", action="store_true", help="the Flower SuperNode runs beside this node, not as its child"
    )
    serve.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="the hub's Flower SuperLink: run a SuperNode joining it once enrolled "
        "('auto': the one the hub names, if on loopback)",
    )
    serve.add_argument("--supernode-port", type=int, help="port of the child SuperNode's app API (default: a free one)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=_serve)
