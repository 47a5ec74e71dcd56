"""``nexus bench hub`` runs end to end (tiny sizes; the real figures come from the CLI)."""

from __future__ import annotations

import json

import pytest

from nexus_cli import main


@pytest.mark.slow
def test_bench_hub_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "hub", "--json", "--nodes", "6", "--edges", "2", "--seconds", "0.5", "--redis", ""]) == 0
    result = json.loads(capsys.readouterr().out)
    sqlite = result["stores"]["sqlite"]
    assert set(result["stores"]) == {"sqlite"}
    assert sqlite["heartbeats_per_s"] > 0 and sqlite["heartbeat_errors"] == 0
    assert 0 < sqlite["rollout_all_edges_s"] < 30
