"""``nexus bench audit`` runs end to end (a small log; the real figures come from the CLI)."""

from __future__ import annotations

import json

import pytest

from nexus_cli import main


def test_bench_audit_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "audit", "--json", "--entries", "300", "--runs", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["entries"] == 300 and result["runs"] == 5 and result["proof_hashes"] >= 1
    assert all(result[k] > 0 for k in ("edge_proof_us", "edge_proof_any_us", "hub_verify_us", "rehash_ms"))
