"""Request bodies of the hub's HTTP API (pydantic only here, at the system edge)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from models.receipts import HEAD_KEY_ID, HEAD_ROOT, HEAD_SIGNATURE, HEAD_TIME

TagKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,31}$")]
TagValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=16)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCreate(_Body):
    tags: Tags = {}
    ttl_s: float = Field(24 * 3600.0, gt=0, le=30 * 24 * 3600.0)


class Enroll(_Body):
    token: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class AuditHead(_Body):
    """A node's newest signed audit tree head (edge_worker/audit.py ``TreeHead``), in the
    exact formats the edge writes (edge_worker/payloads.py checks the same)."""

    size: int = Field(strict=True, ge=1, le=2**53)
    root: Annotated[str, StringConstraints(pattern=f"^{HEAD_ROOT}$")]
    time: Annotated[str, StringConstraints(pattern=f"^{HEAD_TIME}$")]
    key_id: Annotated[str, StringConstraints(pattern=f"^{HEAD_KEY_ID}$")]
    signature: Annotated[str, StringConstraints(pattern=f"^{HEAD_SIGNATURE}$")]


class Heartbeat(_Body):
    """Node metadata from a fixed set of fields: numbers, enums and model ids only."""

    models: Annotated[dict[ModelName, Version], Field(max_length=64)] = {}
    health: Literal["ok", "degraded", "starting", "unhealthy"]
    request_rate: float = Field(0.0, ge=0)
    queue_depth: int = Field(0, ge=0)
    #: assigned bundles this node currently refuses (failed verification)
    bundle_refusals: int = Field(0, ge=0)
    sync_errors: int = Field(0, ge=0)
    #: the node's audit log (the dashboard's Privacy page); absent until the node reports them
    bytes_sent: int | None = Field(None, ge=0)
    audit_entries: int | None = Field(None, ge=0)
    audit_ok: bool | None = None
    audit_verified_at: float | None = Field(None, ge=0)
    #: the hub keeps the largest head per node and flags a later smaller or different one
    audit_head: AuditHead | None = None


class Promote(_Body):
    version: Version
    stage: Literal["canary", "stable"]
    percent: int | None = Field(None, ge=1, le=100)


class Assign(_Body):
    version: Version
    select: Tags = {}
    percent: int = Field(100, ge=1, le=100)


class StartRun(_Body):
    """``POST /v1/rounds`` (docs/federated.md): one federated run on the hub's SuperLink."""

    model: Literal["funnel", "emotion"]
    rounds: int = Field(3, ge=1, le=1000)
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedtrimmedavg", "krum"] = "fedavg"
    min_nodes: int = Field(2, ge=1, le=100_000)
    fraction: float = Field(1.0, gt=0, le=1)
    #: "region=1,2;tier=gold" (federated.settings.parse_select)
    select: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.,;=-]{0,256}$")] = ""
    local_epochs: int = Field(1, ge=1, le=1000)
    compression: Literal["int8", "fp16", "none"] = "int8"
    timeout_s: float = Field(120.0, gt=0, le=24 * 3600.0)
    deadline_s: float = Field(1800.0, gt=0, le=7 * 24 * 3600.0)
