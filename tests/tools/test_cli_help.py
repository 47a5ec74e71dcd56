"""Every ``nexus`` sub-command documents every argument: a help text, and its default."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from nexus_cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: str = "nexus") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, f"{path} {name}")


def _problems(path: str, parser: argparse.ArgumentParser) -> Iterator[str]:
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            yield f"{path} {name}: no help text"
            continue
        shown = formatter._get_help_string(action) or ""
        takes_value = action.nargs != 0 and action.option_strings and not action.required
        if takes_value and "default" not in shown:
            yield f"{path} {name}: the help does not say its default"


COMMANDS = list(_commands(build_parser()))


def test_the_tree_has_every_command() -> None:
    paths = {path for path, _ in COMMANDS}
    for expected in ("nexus edge serve", "nexus hub models show", "nexus hub experiments results", "nexus demo"):
        assert expected in paths


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[path for path, _ in COMMANDS])
def test_every_argument_has_help_and_its_default(path: str, parser: argparse.ArgumentParser) -> None:
    assert list(_problems(path, parser)) == []


def test_edge_serve_help_lists_the_environment_only_settings() -> None:
    parser = dict(COMMANDS)["nexus edge serve"]
    text, epilog = parser.format_help(), parser.epilog or ""
    assert epilog in text
    assert "NEXUS_MAX_BATCH=32  (>= 1, <= 4096)\n      the most items in one model call" in epilog
    assert "NEXUS_EMOTION_BACKEND=onnx  (onnx|onnx-int8|tflite)" in epilog
    # a setting with a flag is described by the flag, not again in the list
    assert "NEXUS_PORT" not in epilog and "--port PORT" in text
