"""How the ServerApp and the ClientApp read a run's configuration (``nexus_wire.runconfig``):
Flower's run config as the one record, with one-line errors and the node selection parsed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.errors import NexusError
from nexus_wire.runconfig import RunConfig


def read_run_config(config: Mapping[str, Any]) -> RunConfig:
    """Flower's run config (``--run-config`` keys) as the record; a bad value is a NexusError."""
    try:
        run = RunConfig.from_flower(config)
    except ValueError as exc:
        raise NexusError(str(exc)) from None
    parse_select(run.select)
    return run


def parse_select(text: str) -> dict[str, set[str]]:
    """``"region=1,2;tier=gold"`` -> {"region": {"1", "2"}, "tier": {"gold"}}."""
    tags: dict[str, set[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise NexusError(f"node selection {part!r} must look like key=value[,value...]")
        tags[key.strip()] = {v.strip() for v in values.split(",") if v.strip()}
    return tags
