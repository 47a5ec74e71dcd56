"""What a CLI command prints on stdout: tables for people by default, one line of JSON with ``--json``.

Every command builds its answer once (the API's JSON) and a view of it (:class:`Table` and
plain lines); :func:`emit` prints one or the other, so the two cannot disagree. Tables are
drawn by rich; off a terminal (pipes, logs, tests) lines are never wrapped, so a row stays
one line that grep and awk can read. Cell text is printed as it is: no rich markup, so a
value like ``[joy]`` survives.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

#: wide enough that no table or line is ever wrapped when stdout is not a terminal
_OFF_TERMINAL_WIDTH = 10_000
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?%?")


@dataclass(frozen=True)
class Table:
    """Columns of values; ``None`` shows as ``-``. Columns whose values are all numbers (or
    numbers as text, formatted by the caller to a fixed precision) align right."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]


View = Table | str


def cell(value: Any) -> str:
    """A value as a table shows it: ``-`` for none, ``k=v,...`` for a mapping, ``a,b`` for a list."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def when(timestamp: float | None) -> str | None:
    """A Unix time as UTC ISO 8601 to the second (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _numeric(values: Iterable[Any]) -> bool:
    """Numbers, or numbers a command formatted itself (``f"{x:.3f}"``): aligned right."""
    present = [v for v in values if v is not None]
    return bool(present) and all(
        (isinstance(v, (int, float)) and not isinstance(v, bool)) or (isinstance(v, str) and _NUMBER.fullmatch(v))
        for v in present
    )


def _console() -> Console:
    # created per call, so it writes to the sys.stdout of the moment (pytest's capture included)
    tty = sys.stdout.isatty()
    return Console(
        width=None if tty else _OFF_TERMINAL_WIDTH, markup=False, highlight=False, emoji=False, soft_wrap=not tty
    )


def _rich_table(table: Table, tty: bool) -> RichTable:
    # off a terminal: no rule under the header, so every line is the header or a row
    out = RichTable(box=box.SIMPLE_HEAD if tty else None, show_edge=False, pad_edge=False, header_style="bold")
    for i, name in enumerate(table.columns):
        out.add_column(name, justify="right" if _numeric(row[i] for row in table.rows) else "left")
    for row in table.rows:
        out.add_row(*(Text(cell(v)) for v in row))
    return out


def render(views: Sequence[View]) -> None:
    console = _console()
    for view in views:
        if isinstance(view, Table):
            console.print(_rich_table(view, console.is_terminal))
        else:
            console.print(Text(view))


def emit(result: Any, as_json: bool, *views: View) -> None:
    """``result`` as one line of JSON with ``--json``, else ``views`` (tables and lines) in order."""
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        render(views)
