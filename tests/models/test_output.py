"""What CLI commands print: a table by default, one line of JSON with ``--json``."""

from __future__ import annotations

import json

import pytest

from models.output import Table, cell, emit, when


def test_json_is_the_answer_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"model": "funnel", "versions": [{"version": "1"}]}
    emit(answer, True, Table(["MODEL"], [["funnel"]]), "a note")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out) == answer


def test_a_table_is_a_header_and_a_line_per_row_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    long = "REGRESSION: audit log went back: the hub held size 6, root " + "ab" * 40
    emit(
        {},
        False,
        "title [joy]",
        Table(["NODE", "N", "AUDIT", "TAGS"], [["n-1", 3, long, {"region": "3"}], ["n-22", 12, None, {}]]),
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "title [joy]"  # no rich markup: brackets stay
    assert lines[1].split() == ["NODE", "N", "AUDIT", "TAGS"]
    assert long in lines[2] and "region=3" in lines[2]  # never wrapped, however long
    assert lines[3].split() == ["n-22", "12", "-", "-"]
    # numbers align right
    assert lines[2].index("3 ") == lines[3].index("12 ") + 1
    assert len(lines) == 4


def test_cells() -> None:
    assert [cell(None), cell(True), cell(0.123456), cell(["a", "b"]), cell({})] == ["-", "yes", "0.1235", "a,b", "-"]
    assert when(0) == "1970-01-01T00:00:00Z" and when(None) is None
