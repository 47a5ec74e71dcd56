"""``nexus bench rounds``: the breakdown from traces and SuperNode logs, and one real sitting (tiny)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from nexus_cli import main
from nexus_tools.bench_rounds import PHASES, breakdown, supernode_events


def _line(t: float, text: str) -> str:
    # Flower's DEBUG console line, colour codes and all
    return f"\x1b[92mINFO {datetime.fromtimestamp(t).strftime('%Y-%m-%d %H:%M:%S,%f')[:-3]}\x1b[0m:      {text}"


def _message(kind: str, node: int, pushed: float, replied: float, seen: float, n: int) -> dict:
    return {"message_type": kind, "node": node, "group": "", "pushed_at": pushed, "message_id": f"m{n}",
            "reply_id": f"r{n}", "replied_at": replied, "seen_at": seen, "error": False}  # fmt: skip


def test_a_round_is_split_into_its_phases() -> None:
    t0 = 1_800_000_000.0
    # one node: train pushed at 0, pulled at 1, replied at 2, sent at 2.5, seen at 3; evaluate 3 .. 6
    trace = {
        "messages": [_message("train", 1, t0, t0 + 2, t0 + 3, 1), _message("evaluate", 1, t0 + 3, t0 + 5, t0 + 6, 2)]
    }
    log = "\n".join(
        [
            _line(t0 + 0.9, "Receiving: train message (ID: m1)"),
            _line(t0 + 1.0, "Received successfully"),
            _line(t0 + 2.4, "Sending: train message (ID: r1)"),
            _line(t0 + 2.5, "Sent successfully"),
            _line(t0 + 4.0, "Receiving: evaluate message (ID: m2)"),
            _line(t0 + 4.0, "Received successfully"),
            _line(t0 + 5.5, "Sending: evaluate message (ID: r2)"),
            _line(t0 + 5.5, "Sent successfully"),
        ]
    )
    assert supernode_events(log)["m1"] == {"received": pytest.approx(t0 + 1.0)}
    result = breakdown(trace, [log])
    assert result["rounds"] == [{"round": 1, "seconds": pytest.approx(6.0)}] and result["messages_timed"] == 2
    medians = result["phases_s_median"]
    assert set(medians) == set(PHASES)
    assert medians["pickup"] == pytest.approx(1.0, abs=1e-3) and medians["seen"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_bench_rounds_runs_both_sides_in_one_sitting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "rounds", "--rounds", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for side in ("bare_flower", "ours"):
        assert len(result[side]["rounds"]) == 1 and result[side]["messages_timed"] == 4
        assert all(v is not None and v >= 0 for v in result[side]["phases_s_median"].values())
    assert result["round_ratio"] > 0
