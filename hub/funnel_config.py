"""Funnels and experiments as validated, immutable values.

Ids become parts of counter keys (SQLite rows, Redis key names, JSON on the wire), so they
are restricted to a small charset without ":" or whitespace. Every change to an experiment
returns a new value with ``version`` bumped, which is what edges see as a new config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from models.errors import NexusError
from nexus_wire.names import CONFIG_ID, fullmatch


class FunnelConfigError(NexusError):
    """A funnel or experiment definition is invalid."""


class Status(StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"


class Allocation(StrEnum):
    FIXED = "fixed"
    THOMPSON = "thompson"


# Experiments only move forward: a stopped experiment's counts are final.
_TRANSITIONS = {Status.DRAFT: {Status.RUNNING, Status.STOPPED}, Status.RUNNING: {Status.STOPPED}, Status.STOPPED: set()}


def check_id(kind: str, value: str) -> str:
    if not fullmatch(CONFIG_ID, value):
        raise FunnelConfigError(
            f"{kind} {value!r} must be 1-64 characters of A-Z a-z 0-9 _ -, not starting with _ or -"
        )
    return value


@dataclass(frozen=True)
class Funnel:
    id: str
    steps: tuple[str, ...]

    def __post_init__(self) -> None:
        check_id("funnel id", self.id)
        if not self.steps:
            raise FunnelConfigError(f"funnel {self.id} needs at least one step")
        for step in self.steps:
            check_id("step", step)
        if len(set(self.steps)) != len(self.steps):
            raise FunnelConfigError(f"funnel {self.id} has duplicate steps: {list(self.steps)}")


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float

    def __post_init__(self) -> None:
        check_id("variant", self.name)
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, (int, float))
            or not (math.isfinite(self.weight) and self.weight > 0)
        ):
            raise FunnelConfigError(f"variant {self.name} weight must be a positive number, got {self.weight!r}")


@dataclass(frozen=True)
class Experiment:
    """The first variant is the control. ``salt`` re-shuffles buckets for a re-run."""

    id: str
    funnel_id: str
    variants: tuple[Variant, ...]
    decision_step: str
    status: Status = Status.DRAFT
    allocation: Allocation = Allocation.FIXED
    version: int = 1
    salt: str = ""

    def __post_init__(self) -> None:
        check_id("experiment id", self.id)
        check_id("funnel id", self.funnel_id)
        if self.salt:
            check_id("salt", self.salt)
        if len(self.variants) < 2:
            raise FunnelConfigError(f"experiment {self.id} needs at least two variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise FunnelConfigError(f"experiment {self.id} has duplicate variant names: {names}")
        if type(self.version) is not int or self.version < 1:
            raise FunnelConfigError(f"experiment {self.id} version must be a positive integer")
        # Enums by value, so plain strings from a store or CLI are accepted and checked.
        try:
            object.__setattr__(self, "status", Status(self.status))
            object.__setattr__(self, "allocation", Allocation(self.allocation))
        except ValueError as exc:
            raise FunnelConfigError(f"experiment {self.id}: {exc}") from None

    @property
    def control(self) -> str:
        return self.variants[0].name

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    @property
    def weights(self) -> dict[str, float]:
        """Normalised weights, as the edge's assignment uses them."""
        total = sum(v.weight for v in self.variants)
        return {v.name: v.weight / total for v in self.variants}

    def validate_against(self, funnel: Funnel) -> None:
        if funnel.id != self.funnel_id:
            raise FunnelConfigError(f"experiment {self.id} belongs to funnel {self.funnel_id}, not {funnel.id}")
        if self.decision_step not in funnel.steps:
            raise FunnelConfigError(
                f"decision step {self.decision_step!r} is not a step of funnel {funnel.id}: {list(funnel.steps)}"
            )

    def with_status(self, status: Status | str) -> Experiment:
        status = Status(status)
        if status not in _TRANSITIONS[self.status]:
            raise FunnelConfigError(f"experiment {self.id} cannot go from {self.status} to {status}")
        return replace(self, status=status, version=self.version + 1)

    def with_weights(self, weights: dict[str, float]) -> Experiment:
        """New weights for the same variants (Thompson updates, or an operator's edit)."""
        if set(weights) != set(self.variant_names):
            raise FunnelConfigError(f"weights must name exactly the variants {list(self.variant_names)}")
        variants = tuple(Variant(v.name, weights[v.name]) for v in self.variants)
        return replace(self, variants=variants, version=self.version + 1)
