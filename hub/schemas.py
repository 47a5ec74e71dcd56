"""Request bodies of the hub's HTTP API (pydantic only here, at the system edge)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from models.families import FAMILIES
from nexus_wire.counters import MAX_COUNT
from nexus_wire.heads import HEAD_KEY_ID, HEAD_ROOT, HEAD_SIGNATURE, HEAD_TIME
from nexus_wire.merkle import MAX_PROOF_HASHES
from nexus_wire.names import MODEL_NAME, TAG_KEY, TAG_VALUE, VERSION, anchored
from nexus_wire.runconfig import api_model

TagKey = Annotated[str, StringConstraints(pattern=anchored(TAG_KEY))]
TagValue = Annotated[str, StringConstraints(pattern=anchored(TAG_VALUE))]
ModelName = Annotated[str, StringConstraints(pattern=anchored(MODEL_NAME))]
Version = Annotated[str, StringConstraints(pattern=anchored(VERSION))]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=16)]
#: a node's non-negative count (requests, bytes, entries): exact in a float, so in every JSON reader
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
#: a Unix time a node reports: the dashboard turns it into a date, which ends at year 9999;
#: 2100-01-01 leaves any real clock room and keeps every view's arithmetic finite
LATEST_TIME = 4_102_444_800.0
#: requests per second: far above what one node serves, far below where sums lose precision
MAX_RATE = 1e9


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCreate(_Body):
    tags: Tags = {}
    ttl_s: float = Field(24 * 3600.0, gt=0, le=30 * 24 * 3600.0, allow_inf_nan=False)


class Enroll(_Body):
    token: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class AuditHead(_Body):
    """A node's newest signed audit tree head (edge_worker/audit/log.py ``TreeHead``), in the
    exact formats the edge writes (edge_worker/payloads.py checks the same)."""

    size: int = Field(strict=True, ge=1, le=2**53)
    root: Annotated[str, StringConstraints(pattern=anchored(HEAD_ROOT))]
    time: Annotated[str, StringConstraints(pattern=anchored(HEAD_TIME))]
    key_id: Annotated[str, StringConstraints(pattern=anchored(HEAD_KEY_ID))]
    signature: Annotated[str, StringConstraints(pattern=anchored(HEAD_SIGNATURE))]


ProofHash = Annotated[str, StringConstraints(pattern=anchored(HEAD_ROOT))]


class AuditConsistency(_Body):
    """RFC 6962 consistency proof from the node's head of ``first_size`` (the one the hub
    said it holds) to the heartbeat's ``audit_head``."""

    first_size: int = Field(strict=True, ge=1, le=2**53)
    proof: Annotated[list[ProofHash], Field(max_length=MAX_PROOF_HASHES)]


class Heartbeat(_Body):
    """Node metadata from a fixed set of fields: numbers, enums and model ids only."""

    models: Annotated[dict[ModelName, Version], Field(max_length=64)] = {}
    health: Literal["ok", "degraded", "starting", "unhealthy"]
    request_rate: float = Field(0.0, ge=0, le=MAX_RATE, allow_inf_nan=False)
    queue_depth: Count = 0
    #: assigned bundles this node currently refuses (failed verification)
    bundle_refusals: Count = 0
    sync_errors: Count = 0
    #: the node's audit log (the dashboard's Privacy page); absent until the node reports them
    bytes_sent: Count | None = None
    audit_entries: Count | None = None
    audit_ok: bool | None = None
    audit_verified_at: float | None = Field(None, ge=0, le=LATEST_TIME, allow_inf_nan=False)
    #: the hub keeps the largest head per node and flags a later smaller or different one
    audit_head: AuditHead | None = None
    #: proves ``audit_head`` extends the head the hub holds (hub/audit_heads.py)
    audit_consistency: AuditConsistency | None = None

    @model_validator(mode="after")
    def _proof_of_a_larger_head(self) -> Heartbeat:
        if self.audit_consistency is not None and (
            self.audit_head is None or self.audit_consistency.first_size >= self.audit_head.size
        ):
            raise ValueError("audit_consistency: proves a larger audit_head from a smaller first_size")
        return self


class Promote(_Body):
    version: Version
    stage: Literal["canary", "stable"]
    percent: int | None = Field(None, ge=1, le=100)
    #: promote a candidate the promotion gate found worse than the version it replaces (hub/promotion_gate.py)
    force: bool = False


class Assign(_Body):
    version: Version
    select: Tags = {}
    percent: int = Field(100, ge=1, le=100)


#: ``POST /v1/rounds`` (docs/federated.md): one federated run on the hub's SuperLink; the
#: API keys of the run configuration record, the model required and one of the registry's families
StartRun = api_model("StartRun", FAMILIES.names())
