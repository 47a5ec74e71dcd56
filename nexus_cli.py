"""``nexus``: one console script; each package contributes its sub-commands.

Errors the user can fix (:class:`models.errors.NexusError`) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from models.errors import NexusError
from nexus_tools import cli as tools_cli

# Each module defines ``register(subparsers)``; every sub-command sets ``func(args) -> int``.
_COMMAND_MODULES = ("models.cli", "edge_worker.cli", "edge_worker.audit.cli", "hub.cli", "federated.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description="Nexus Edge: edge ML runtime for sales funnels")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tools_cli.register_bench(sub)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not a not-yet-written module
                raise
            continue
        module.register(sub)
    tools_cli.register_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NexusError as exc:
        print(f"nexus: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nexus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
