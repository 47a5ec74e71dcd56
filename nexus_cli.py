"""``nexus``: one console script; each package contributes its sub-commands.

Errors the user can fix (:class:`models.errors.NexusError`) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from models.errors import NexusError
from nexus_tools import cli as tools_cli

# Each module defines ``register(subparsers)``; every sub-command sets ``func(args) -> int``.
_COMMAND_MODULES = ("models.cli", "edge_worker.cli", "edge_worker.audit.cli", "hub.cli", "federated.cli")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already says it (or there is
    none to say: flags, required options, positionals). Descriptions and epilogs keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        quiet = action.default in (None, argparse.SUPPRESS) or action.required or not action.option_strings
        if quiet or action.nargs == 0 or "default" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """The parser of ``nexus`` and, through ``add_subparsers``, of every sub-command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nexus", description="Nexus Edge: edge ML runtime for sales funnels")
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
