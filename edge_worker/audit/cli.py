"""``nexus audit verify|report``: the privacy officer's tools for one edge data dir.

``verify`` exits 0 when the log is intact and 1 naming the first bad entry when it is not
(``--head``: also when the log no longer holds a tree head kept elsewhere, or is not
consistent with it: no RFC 6962 consistency proof from its size to the whole log verifies);
problems the user can fix (no such dir, unreadable key) exit 2 like every NexusError.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_worker.audit.log import load_tree_head
from edge_worker.audit.report import build_report, render_html
from edge_worker.audit.verify import verify
from models.errors import NexusError
from nexus_service.keyfiles import load_public_key
from nexus_wire.datadir import EdgeDataDir

TAMPERED = 1
_KEY_NAME = EdgeDataDir(Path()).audit_key.name


def _data_dir(args: argparse.Namespace) -> Path:
    path = Path(args.data_dir)
    if not path.is_dir():
        raise NexusError(f"no such data dir: {path}")
    return path


def _keys(args: argparse.Namespace) -> tuple[Ed25519PublicKey | None, Ed25519PublicKey | None]:
    node = load_public_key(Path(args.node_key)) if args.node_key else None
    hub = load_public_key(Path(args.hub_key)) if args.hub_key else None
    return node, hub


def _verify(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    node, hub = _keys(args)
    held_head = load_tree_head(Path(args.head)) if args.head else None
    result = verify(data_dir, node, hub, held_head)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(result.message(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else TAMPERED


def _report(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    node, hub = _keys(args)
    report = build_report(data_dir, node, hub, args.retention_days)
    text = render_html(report) if args.format == "html" else json.dumps(report, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="the edge node's data dir")
    parser.add_argument(
        "--node-key", help=f"the node's public key held apart from the node (default: {_KEY_NAME} in the data dir)"
    )
    parser.add_argument(
        "--hub-key", help="the hub's public key (PEM or raw base64); default: the key pinned in the log"
    )


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="verify an edge's audit log and report what it stored and sent")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    verify_p = asub.add_parser("verify", help="check every entry, signed tree head and hub receipt")
    _common(verify_p)
    verify_p.add_argument(
        "--head",
        help="a signed tree head held elsewhere (JSON: the hub's copy, or a report with "
        "'tree_head'): the log must still hold its entries, and a consistency proof from it to the "
        "whole log must verify (a log rewritten and grown past it fails) (default: none)",
    )
    verify_p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    verify_p.set_defaults(func=_verify)

    report_p = asub.add_parser("report", help="data inventory, egress ledger, DP budget, refusals, erasures")
    _common(report_p)
    report_p.add_argument(
        "--format", choices=("json", "html"), default="json", help="JSON for tools, HTML for the privacy officer"
    )
    report_p.add_argument("--out", help="write to this file (default: stdout)")
    report_p.add_argument(
        "--retention-days", type=float, help="retention limit (default: from the newest retention run)"
    )
    report_p.set_defaults(func=_report)
