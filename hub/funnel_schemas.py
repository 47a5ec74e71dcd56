"""HTTP / CLI edge of funnel config and counter sync: pydantic in, dataclasses out.

Pydantic checks shapes and types (422 on failure); the domain rules (charset, weights,
decision step) live in hub/funnel_config.py and raise FunnelConfigError, which the apps
map to a 4xx like any NexusError. The config document is what edges pull (with an ETag).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from hub.counters import NodeReport
from hub.funnel_config import Allocation, Experiment, Funnel, Status, Variant, check_id
from nexus_wire.assignment import ALGORITHM


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunnelIn(_In):
    id: str
    steps: list[str] = Field(min_length=1)

    def to_funnel(self) -> Funnel:
        return Funnel(id=self.id, steps=tuple(self.steps))


class VariantIn(_In):
    name: str
    weight: float = 1.0


class ExperimentIn(_In):
    id: str
    funnel_id: str
    variants: list[VariantIn] = Field(min_length=2)
    decision_step: str
    allocation: Allocation = Allocation.FIXED
    salt: str = ""

    def to_experiment(self, funnel: Funnel) -> Experiment:
        experiment = Experiment(
            id=self.id,
            funnel_id=self.funnel_id,
            variants=tuple(Variant(v.name, v.weight) for v in self.variants),
            decision_step=self.decision_step,
            allocation=self.allocation,
            salt=self.salt,
        )
        experiment.validate_against(funnel)
        return experiment


class CounterIn(_In):
    experiment: str
    variant: str
    step: str
    count: int = Field(ge=0)


class NodeReportIn(_In):
    """An edge's absolute local counts; ``counts`` may hold only the keys changed since its last sync."""

    node_id: str
    counts: list[CounterIn]

    def to_report(self) -> NodeReport:
        check_id("node id", self.node_id)  # it becomes part of a store key too
        return NodeReport(self.node_id, {(c.experiment, c.variant, c.step): c.count for c in self.counts})


def config_document(funnels: Iterable[Funnel], experiments: Iterable[Experiment]) -> dict:
    """What edges need to assign and count: funnels with their steps, and running experiments.

    Draft experiments stay hub-side; stopped ones are listed so an edge stops assigning
    (and keeps its counts for the final sync).
    """
    return {
        "assignment": ALGORITHM,
        "funnels": [{"id": f.id, "steps": list(f.steps)} for f in sorted(funnels, key=lambda f: f.id)],
        "experiments": [
            {
                "id": e.id,
                "funnel_id": e.funnel_id,
                "status": str(e.status),
                "version": e.version,
                "salt": e.salt,
                "variants": [{"name": v.name, "weight": v.weight} for v in e.variants],
            }
            for e in sorted(experiments, key=lambda e: e.id)
            if e.status != Status.DRAFT
        ],
    }


def config_etag(document: dict) -> str:
    """Strong ETag over the canonical JSON, so equal configs give equal tags on any hub replica."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'
