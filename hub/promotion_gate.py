"""The promotion gate: a federated candidate against the version it would replace, on the same rows.

In a run's last round every node evaluates, on its own held-out rows, both the candidate (the
aggregated model) and the run's base, the stable version the run started from (federated
evaluation: only the metrics leave the nodes; federated/strategy.py). The round's record holds
both weighted averages (``score`` and ``baseline_score``). :func:`compare` turns them into the
gate's verdict, which the candidate's manifest keeps (``provenance.federated.gate``, hub/round_export.py)
and :func:`refusal` reads when someone promotes the candidate: a candidate worse on the run's
metric is refused unless forced; ``--auto-promote`` promotes only one better by ``promote_margin``.
Every score the hub trains on (ROC-AUC, macro-F1) is higher-is-better.
"""

from __future__ import annotations

from typing import Any

BETTER, WORSE, EVEN = "better", "worse", "even"


def compare(rounds: list[dict[str, Any]], base_version: str) -> dict[str, Any] | None:
    """The gate's verdict from a run's round records, or None when no round measured both models."""
    both = [r for r in rounds if r.get("score") is not None and r.get("baseline_score") is not None]
    if not both:
        return None
    last = both[-1]
    candidate, baseline = float(last["score"]), float(last["baseline_score"])
    delta = candidate - baseline
    return {
        "round": int(last["round"]),
        "nodes": int(last.get("eval_nodes") or 0),
        "candidate": candidate,
        "baseline": baseline,
        "baseline_version": base_version,
        "delta": delta,
        "verdict": BETTER if delta > 0 else WORSE if delta < 0 else EVEN,
    }


def gate_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict a version's manifest carries (only federated candidates have one)."""
    gate = manifest.get("provenance", {}).get("federated", {}).get("gate")
    return gate if isinstance(gate, dict) else None


def refusal(model: str, version: str, gate: dict[str, Any] | None) -> str | None:
    """Why promoting ``version`` is refused without ``force``, or None when the gate lets it through."""
    if gate is None or gate["verdict"] != WORSE:
        return None
    return (
        f"{model} v{version} is worse than v{gate['baseline_version']} on the nodes' evaluation data "
        f"({gate['candidate']:.4f} vs {gate['baseline']:.4f}, {gate['delta']:+.4f}, round {gate['round']}, "
        f"{gate['nodes']} node(s)); promote it anyway with --force"
    )


def auto_promotes(gate: dict[str, Any] | None, margin: float) -> bool:
    """Whether ``--auto-promote`` promotes: better than the stable version by at least ``margin``."""
    return gate is not None and gate["delta"] > 0 and gate["delta"] >= margin
