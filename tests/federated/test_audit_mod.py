"""Flower traffic in the audit log and DP within a per-node budget: the real ClientApp (store
loader + audit mod) over the in-process LocalGrid, each node with its own data dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from edge_worker.audit import REFUSAL, SEND, AuditReader, PrivacyBudget, verify
from edge_worker.audit.report import build_report
from federated.audit_mod import audit_mod
from federated.client_app import app
from federated.digest import describe
from federated.local_grid import LocalGrid
from federated.server_app import run_rounds
from models.families import FAMILIES
from nexus_wire.outcomes import DP_BUDGET, failure_reason
from nexus_wire.runconfig import RunConfig
from tests.support.federated import funnel_spec, node_with_outcomes

SIGMA, CLIP = 2.0, 1.0


def _grid(dirs: list[Path], run_config: dict) -> LocalGrid:
    grid = LocalGrid(app, {i + 1: {"data-dir": str(d)} for i, d in enumerate(dirs)})
    for context in grid.contexts.values():
        context.run_config.update(run_config)
    return grid


def test_a_node_stops_taking_part_once_its_budget_is_spent(tmp_path: Path) -> None:
    (a, sessions_a), (b, sessions_b) = node_with_outcomes(tmp_path / "a", 1), node_with_outcomes(tmp_path / "b", 2)
    spec = funnel_spec(sessions_a + sessions_b)
    # node a may afford exactly two rounds at this noise; node b only records what it spends
    probe = PrivacyBudget(tmp_path / "probe")
    budget = (probe.epsilon_after(SIGMA, rounds=2) + probe.epsilon_after(SIGMA, rounds=3)) / 2
    PrivacyBudget(a, epsilon=budget, delta=1e-5)

    grid = _grid([a, b], RunConfig(dp_noise_multiplier=SIGMA, dp_clipping_norm=CLIP).to_flower())
    result = run_rounds(
        grid, RunConfig(rounds=4, min_nodes=1, seed=3), spec, FAMILIES.get("funnel").task.init_weights(spec, 0)
    )
    assert [r.participants for r in result.rounds] == [2, 2, 1, 1]
    assert [r.train_failures for r in result.rounds] == [0, 0, 1, 1]
    assert all(np.all(np.isfinite(w)) for w in result.weights.values())

    reader = AuditReader(a)
    updates = [e for e in reader.entries(SEND) if e.kind == "model-update"]
    assert len(updates) == 2
    for entry, rounds in zip(updates, (1, 2)):
        dp = entry.summary["dp"]
        assert (dp["noise_multiplier"], dp["clipping_norm"]) == (SIGMA, CLIP)
        assert dp["epsilon"] == pytest.approx(probe.epsilon_after(SIGMA, rounds=rounds))
        assert set(entry.summary["arrays"]) == {f"arrays/{n}" for n in ("w0", "b0", "w1", "b1")}
        assert all(x["dtype"] == "float32" for x in entry.summary["arrays"].values())
        assert entry.summary["records"]["metrics"] == {
            "num-examples": entry.summary["records"]["metrics"]["num-examples"]
        }
    refusals = list(reader.entries(REFUSAL))
    assert len(refusals) == 2 and all("privacy budget exhausted" in e.reason for e in refusals)
    errors = [e for e in reader.entries(SEND) if e.kind == "error"]
    # what the server was told: the refusal, of kind "dp-budget" (nexus_wire/outcomes.py)
    assert len(errors) == 2 and errors[0].summary["reason"] == failure_reason(DP_BUDGET, refusals[0].reason)
    assert [f["kind"] for r in result.rounds for f in r.failures] == [DP_BUDGET, DP_BUDGET]
    assert verify(a).ok

    report = build_report(a)
    spent = report["privacy_budget"]
    assert spent["rounds"] == 2 and spent["epsilon_budget"] == pytest.approx(budget)
    assert spent["epsilon_spent"] <= budget < probe.epsilon_after(SIGMA, rounds=3)
    assert report["refusals"]["count"] == 2
    assert report["egress"]["by_channel"][0]["kinds"]["model-update"] == 2

    # node b had no budget: it took part every round and its spending was recorded
    assert PrivacyBudget(b).summary()["rounds"] == 4 and PrivacyBudget(b).epsilon_budget is None

    # a node with a budget never sends an update without noise
    grid = _grid([a, b], RunConfig(dp_noise_multiplier=0.0).to_flower())
    result = run_rounds(grid, RunConfig(rounds=1, min_nodes=1), spec, FAMILIES.get("funnel").task.init_weights(spec, 0))
    assert result.rounds[0].nodes == [2]
    assert "adds no noise" in list(AuditReader(a).entries(REFUSAL))[-1].reason


def test_every_reply_is_recorded_with_its_arrays(tmp_path: Path) -> None:
    def handler(msg: Message, context: Context) -> Message:
        arrays = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 5})}), reply_to=msg)

    def strings(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": ArrayRecord({"t": Array(np.array(["Bob's message"]))})}), reply_to=msg)

    grid = LocalGrid(app, {1: {"data-dir": str(tmp_path)}})
    context = grid.contexts[1]
    msg = grid.create_message(RecordDict(), "evaluate", 1, "g")
    reply = audit_mod(msg, context, handler)
    [entry] = AuditReader(tmp_path).entries(SEND)
    body, summary = describe(reply.content)
    assert (entry.bytes, entry.kind) == (len(body), "evaluation-metrics")
    assert summary["arrays"]["arrays/w"]["shape"] == [2, 3] and summary["records"] == {"metrics": {"num-examples": 5}}

    refused = audit_mod(msg, context, strings)
    assert refused.has_error() and "non-numeric" in refused.error.reason
    assert "non-numeric arrays refused" in list(AuditReader(tmp_path).entries(REFUSAL))[0].reason
    assert verify(tmp_path).ok
