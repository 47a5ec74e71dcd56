"""A federated run's settings, parsed once from Flower's run config (``--run-config`` keys).

The defaults live here and in ``federated/flower_app/pyproject.toml`` (Flower only
accepts run-config keys the app declares); keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federated.codec import COMPRESSIONS
from models.errors import NexusError

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedtrimmedavg", "krum")


@dataclass(frozen=True)
class RunSettings:
    model: str = "funnel"
    num_rounds: int = 3
    local_epochs: int = 1
    lr: float = 0.0  # 0 = the family's default learning rate
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    min_nodes: int = 2
    fraction: float = 1.0
    select: str = ""  # "region=1,2" (several tags: "region=1,2;tier=gold")
    timeout: float = 120.0  # seconds to wait for the replies of one step of a round
    max_update_norm: float = 1e4
    compression: str = "int8"
    seed: int = 0
    base: str = ""  # a bundle folder, or a JSON model spec (weights are then initialised)
    output_path: str = ""  # the final arrays (.npz); the per-round metrics go beside it (.json)

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        fields = cls.__dataclass_fields__
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in fields:
                continue  # other apps' keys (and Flower's own) are not ours to judge
            kind = type(fields[name].default)
            try:
                values[name] = kind(value)
            except (TypeError, ValueError):
                raise NexusError(f"run config {key}={value!r} is not a valid {kind.__name__}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise NexusError(f"unknown strategy {self.strategy!r} (expected one of {', '.join(STRATEGIES)})")
        if self.compression not in COMPRESSIONS:
            raise NexusError(f"unknown compression {self.compression!r} (expected one of {', '.join(COMPRESSIONS)})")
        if self.num_rounds < 1 or self.local_epochs < 1 or self.min_nodes < 1:
            raise NexusError("num-rounds, local-epochs and min-nodes must be at least 1")
        if not 0.0 < self.fraction <= 1.0:
            raise NexusError(f"fraction must be in (0, 1], got {self.fraction}")
        parse_select(self.select)

    @property
    def metrics_path(self) -> Path | None:
        return Path(self.output_path).with_suffix(".json") if self.output_path else None


def parse_select(text: str) -> dict[str, set[str]]:
    """``"region=1,2;tier=gold"`` -> {"region": {"1", "2"}, "tier": {"gold"}}."""
    tags: dict[str, set[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise NexusError(f"node selection {part!r} must look like key=value[,value...]")
        tags[key.strip()] = {v.strip() for v in values.split(",") if v.strip()}
    return tags
