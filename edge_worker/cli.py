"""``nexus edge serve``."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from edge_worker.metrics import reset_metrics_dir
from edge_worker.server import run_uvicorn
from edge_worker.settings import EdgeSettings
from nexus_service.keyfiles import PRIVATE_UMASK

APP_FACTORY = "edge_worker.app:create_app_from_env"


def _serve(args: argparse.Namespace) -> int:
    settings = EdgeSettings.from_env(
        models_dir=args.models,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        workers=args.workers,
        grpc_port=args.grpc_port,
        hub_url=args.hub,
        enroll_token=args.enroll_token,
        enroll_token_file=args.enroll_token_file,
        supernode=False if args.no_supernode else None,
        superlink=args.superlink,
        supernode_port=args.supernode_port,
        superlink_root_cert=args.superlink_root_cert,
        supernode_auth_key=args.supernode_auth_key,
    )
    # Worker processes rebuild the settings from the environment (see EdgeSettings.from_env).
    os.environ.update(settings.to_env())
    os.umask(PRIVATE_UMASK)  # every file the node and its workers create (logs, SQLite sidecars too)
    reset_metrics_dir(settings.data_dir)  # before any worker: a new run's counters start at zero
    run_uvicorn(APP_FACTORY, settings.host, settings.port, settings.workers, args.log_level, settings.server_limits())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    edge = sub.add_parser("edge", help="run an edge inference node")
    esub = edge.add_subparsers(dest="edge_command", required=True, metavar="ACTION")
    serve = esub.add_parser(
        "serve",
        help="serve the models over HTTP",
        description="Serve the emotion and funnel models. Every setting also reads NEXUS_<NAME>\n"
        "(e.g. NEXUS_PORT=8000, NEXUS_EMOTION_BACKEND=tflite); arguments win over the environment.",
    )
    serve.add_argument(
        "--models",
        type=Path,
        help="model repository <model>/<version>/ (default: the shipped bundles, read-only; with --hub: "
        "DATA_DIR/models, a copy of them made at first start, where the hub's versions go)",
    )
    serve.add_argument("--data-dir", type=Path, help="local store folder (default: $XDG_DATA_HOME/nexus-edge)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="server processes (default 1)")
    serve.add_argument(
        "--grpc-port",
        type=int,
        help="also serve Open Inference Protocol v2 over gRPC on this port (Triton's: 8001; with --workers, "
        "shared by SO_REUSEPORT) (default: no gRPC)",
    )
    serve.add_argument("--hub", help="hub URL: sync models and counters with it (default: standalone)")
    serve.add_argument(
        "--enroll-token",
        help="the hub's one-time enrollment token (used once; the node then keeps its identity) (default: none)",
    )
    serve.add_argument(
        "--enroll-token-file", type=Path, help="file holding the hub's one-time enrollment token (default: none)"
    )
    serve.add_argument(
        "--no-supernode", action="store_true", help="the Flower SuperNode runs beside this node, not as its child"
    )
    serve.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="the hub's Flower SuperLink: run a SuperNode joining it once enrolled "
        "('auto': the one the hub names, if on loopback) (default: no SuperNode)",
    )
    serve.add_argument("--supernode-port", type=int, help="port of the child SuperNode's app API (default: a free one)")
    serve.add_argument(
        "--superlink-root-cert",
        type=Path,
        metavar="PATH",
        help="CA certificate of the SuperLink's TLS: the SuperNode joins over TLS (default: plain HTTP, loopback only)",
    )
    serve.add_argument(
        "--supernode-auth-key",
        type=Path,
        metavar="PATH",
        help="the SuperNode's private key for a SuperLink that authenticates SuperNodes (default: none)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="uvicorn's log level"
    )
    serve.epilog = env_epilog({_FLAG_SETTINGS.get(a.dest, a.dest) for a in serve._actions})
    serve.set_defaults(func=_serve)


#: flags whose setting has another name (every other flag sets the setting of its own name)
_FLAG_SETTINGS = {"models": "models_dir", "hub": "hub_url", "no_supernode": "supernode"}


def env_epilog(flagged: set[str]) -> str:
    """``edge serve --help``'s list of the settings only the environment sets: name, default, bounds, purpose."""
    comments = field_comments(EdgeSettings)
    lines = ["settings without a flag, read from the environment only:"]
    for name, field in EdgeSettings.model_fields.items():
        if name in flagged:
            continue
        default = field.get_default(call_default_factory=True)
        if default is None:
            shown = " (unset)"
        elif isinstance(default, tuple):
            shown = "=" + ",".join(default)
        else:
            shown = "=" + (str(default).lower() if isinstance(default, bool) else str(default))
        allowed = _allowed(field.annotation, field.metadata)
        lines.append(f"  NEXUS_{name.upper()}{shown}" + (f"  ({allowed})" if allowed else ""))
        if name in comments:
            lines += textwrap.wrap(comments[name], 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _allowed(annotation: Any, metadata: list[Any]) -> str:
    options = [annotation] if get_origin(annotation) is Literal else get_args(annotation)
    choices = [str(v) for o in options if get_origin(o) is Literal for v in get_args(o)]
    if choices:
        return "|".join(choices)
    bounds = [f"{op} {getattr(m, attr)}" for m in metadata for attr, op in _BOUNDS if hasattr(m, attr)]
    return ", ".join(bounds)


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines above each field of ``cls`` (Sphinx's convention), by field name."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        field = re.match(r"(\w+)\s*:", text)
        if field and pending:
            comments[field.group(1)] = " ".join(pending).replace("``", "")
        pending = []
    return comments
