"""HTTP / CLI edge of funnel config and counter sync: pydantic in, dataclasses out.

Pydantic checks shapes and types (422 on failure); the domain rules (charset, weights,
decision step) live in hub/funnel_config.py and raise FunnelConfigError, which the apps
map to a 4xx like any NexusError. The config document is what edges pull (with an ETag).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hub.counters import NodeReport
from hub.funnel_config import Allocation, Experiment, Funnel, Status, Variant, check_id
from nexus_wire.assignment import ALGORITHM
from nexus_wire.counters import MAX_COUNT

#: bounded here, checked for its characters by hub/funnel_config.py (``check_id``, 1-64 of them)
Id = Annotated[str, Field(max_length=64)]
#: the largest weight: relative weights far past any real split, still far from overflowing a sum
MAX_WEIGHT = 1e6


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunnelIn(_In):
    id: Id
    steps: list[Id] = Field(min_length=1, max_length=64)

    def to_funnel(self) -> Funnel:
        return Funnel(id=self.id, steps=tuple(self.steps))


class VariantIn(_In):
    name: Id
    weight: float = Field(1.0, le=MAX_WEIGHT, allow_inf_nan=False)


class ExperimentIn(_In):
    id: Id
    funnel_id: Id
    variants: list[VariantIn] = Field(min_length=2, max_length=32)
    decision_step: Id
    allocation: Allocation = Allocation.FIXED
    salt: Id = ""

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
    experiment: Id
    variant: Id
    step: Id
    #: a count past 2**63 once reached SQLite as an OverflowError (a 500)
    count: int = Field(ge=0, le=MAX_COUNT)


class NodeReportIn(_In):
    """An edge's absolute local counts; ``counts`` may hold only the keys changed since its last sync."""

    node_id: Annotated[str, Field(max_length=64)]
    counts: list[CounterIn] = Field(max_length=4096)

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
