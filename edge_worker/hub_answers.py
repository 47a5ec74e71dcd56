"""What the edge accepts from the hub: one schema per answer it acts on, and the checks
every answer passes before any of it is used.

The hub is not trusted with the node's filesystem: whatever the link delivers (a
compromised hub, or anyone on a plain-HTTP link) is read with a size cap
(:data:`MAX_ANSWER_BYTES`; the gateway stops reading past it), parsed as one JSON object,
and validated strictly (no coercion, so a number where a string belongs is refused):
digests are 64 lowercase hex digits, model names, versions, ids and file names match
:mod:`nexus_wire.names`, numbers are finite and bounded, lists and maps are bounded. The
assignment document must also carry the pinned hub key's signature for this node
(:mod:`nexus_wire.signed_assignments`). Anything else raises :class:`HubAnswerRefused`,
whose reason names the field and the rule, never the value (it goes into logs and the
sync state). Only validated values ever become part of a path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from models.bundle import FORMAT as BUNDLE_FORMAT
from models.bundle import MANIFEST, SIGNATURE
from models.errors import NexusError
from nexus_service.keyfiles import public_key_from_b64
from nexus_wire.assignment import ALGORITHM
from nexus_wire.heads import HEAD_ROOT
from nexus_wire.names import CONFIG_ID, FILE_NAME, MODEL_NAME, TAG_KEY, TAG_VALUE, TOKEN, VERSION, anchored
from nexus_wire.signed_assignments import DIGEST, AssignmentDocument, signature_verifies

M = TypeVar("M", bound=BaseModel)

#: the largest answer the edge reads (enrollment, heartbeat, errors); the hub's are < 1 KiB
MAX_ANSWER_BYTES = 64 << 10
#: the funnel config: every funnel and experiment of the hub in one document
MAX_FUNNEL_CONFIG_BYTES = 1 << 20
#: one artifact of a bundle (the hub's default upload limit for a whole bundle is 64 MiB)
MAX_ARTIFACT_BYTES = 1 << 32
#: the hub's poll interval is taken within these bounds: faster would hammer the hub, slower stalls rollouts
POLL_INTERVAL_S = (0.05, 3600.0)
#: an ETag as it goes back in If-None-Match: an opaque quoted string of visible ASCII
_ETAG = re.compile(r'(W/)?"[!#-~]{0,128}"')
#: ``host:port`` as the hub names its SuperLink: a DNS name or IPv4 address, or a bracketed IPv6 one
SUPERLINK_ADDRESS = re.compile(
    r"(?P<host>(?=[A-Za-z0-9.-]{1,253}:)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9a-fA-F:.]{2,45}\]):(?P<port>[0-9]{1,5})"
)
_SHOWN = 40  # characters of a hub-supplied key shown in a reason


class HubAnswerRefused(NexusError):
    """An answer of the hub that is not what this node accepts: nothing of it was used."""

    def __init__(self, answer: str, reason: str) -> None:
        super().__init__(f"refused the hub's {answer}: {reason}")
        self.answer = answer
        self.reason = reason


def superlink_address(value: object) -> str | None:
    """``value`` when it is a well-formed ``host:port`` (port 1..65535), else None."""
    if not isinstance(value, str):
        return None
    match = SUPERLINK_ADDRESS.fullmatch(value)
    return value if match is not None and 1 <= int(match["port"]) <= 65535 else None


def etag(answer: str, value: str | None) -> str:
    """The answer's ETag, which the node sends back as a header: well formed or refused."""
    if value is None or not _ETAG.fullmatch(value):
        raise HubAnswerRefused(answer, "ETag header must be a quoted string of at most 128 visible characters")
    return value


def decode(answer: str, content: bytes) -> dict[str, Any]:
    """One JSON object, from a body the gateway read within its cap."""
    try:
        value = json.loads(content)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python's stack
        raise HubAnswerRefused(answer, f"not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise HubAnswerRefused(answer, f"must be a JSON object, got {type(value).__name__}")
    return value


def validated(answer: str, model: type[M], data: object) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HubAnswerRefused(answer, describe(exc)) from None
    except RecursionError:
        raise HubAnswerRefused(answer, "nested too deeply") from None


def describe(exc: ValidationError, listed: int = 3) -> str:
    """``where: rule`` for the first few problems; keys the hub chose are shortened, values never shown."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:listed]:
        where = ".".join(_short(p) for p in err["loc"]) or "document"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - listed
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _short(part: object) -> str:
    text = str(part)
    return repr(text[:_SHOWN] + "...") if len(text) > _SHOWN else text


class _Answer(BaseModel):
    # strict: no coercion; extra members ignored, since a newer hub may add some (they are never used)
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# -- enrollment and heartbeat --------------------------------------------------------------

TagKey = Annotated[str, StringConstraints(pattern=anchored(TAG_KEY))]
TagValue = Annotated[str, StringConstraints(pattern=anchored(TAG_VALUE))]
PollInterval = Annotated[float, Field(ge=POLL_INTERVAL_S[0], le=POLL_INTERVAL_S[1], allow_inf_nan=False)]


class EnrollmentAnswer(_Answer):
    node_id: str = Field(pattern=anchored(CONFIG_ID))
    node_secret: str = Field(pattern=anchored(TOKEN))
    #: the hub's raw Ed25519 key, base64: pinned now, it verifies bundles, assignments and receipts
    public_key: str = Field(pattern=r"^[A-Za-z0-9+/]{43}=$")
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=32)
    poll_interval_s: PollInterval | None = None

    @field_validator("public_key")
    @classmethod
    def _a_key(cls, value: str) -> str:
        public_key_from_b64(value)  # ValueError (refused) when the bytes are not an Ed25519 key
        return value


class HeldHead(_Answer):
    """The audit tree head the hub holds for this node: the next heartbeat proves from it."""

    size: int = Field(ge=1, le=2**53)
    root: str = Field(pattern=anchored(HEAD_ROOT))


class HeartbeatAnswer(_Answer):
    poll_interval_s: PollInterval | None = None
    audit_held: HeldHead | None = None
    #: where this node's SuperNode joins; None when the hub runs no SuperLink
    superlink: str | None = Field(None, max_length=300)

    @field_validator("superlink")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is not None and superlink_address(value) is None:
            raise ValueError("must be host:port (a DNS name, IPv4 or [IPv6] address, port 1..65535)")
        return value


# -- model sync ----------------------------------------------------------------------------


def assignment_document(content: bytes, public_key: Ed25519PublicKey, node_id: str) -> AssignmentDocument:
    """The hub's signed assignments for this node, or :class:`HubAnswerRefused`. The format
    is checked first (bounded, so the signature check only ever hashes a small document)."""
    answer = "assignments"
    raw = decode(answer, content)
    document = validated(answer, AssignmentDocument, raw)
    if not signature_verifies(raw, public_key):
        raise HubAnswerRefused(answer, "signature does not verify against the hub key pinned at enrollment")
    if document.node_id != node_id:
        raise HubAnswerRefused(answer, f"issued for node {document.node_id}, this node is {node_id}")
    return document


BundleFileName = Annotated[str, StringConstraints(pattern=anchored(FILE_NAME))]


class BundleFile(_Answer):
    sha256: str = Field(pattern=anchored(DIGEST))
    bytes: int = Field(ge=0, le=MAX_ARTIFACT_BYTES)


class BundleManifest(_Answer):
    """What the sync agent reads of a signed manifest before it fetches the artifacts
    (the repository reads the rest, from the verified bundle on disk)."""

    format: str = Field(max_length=64)
    name: str = Field(pattern=anchored(MODEL_NAME))
    version: str = Field(pattern=anchored(VERSION))
    files: dict[BundleFileName, BundleFile] = Field(min_length=1, max_length=32)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != BUNDLE_FORMAT:
            raise ValueError(f"is not the bundle format this node reads ({BUNDLE_FORMAT})")
        return value

    @field_validator("files")
    @classmethod
    def _artifacts_only(cls, files: Mapping[str, BundleFile]) -> Mapping[str, BundleFile]:
        reserved = sorted({MANIFEST, SIGNATURE} & set(files))
        if reserved:
            raise ValueError(f"lists {', '.join(reserved)} as an artifact")
        return files


# -- the funnel config ---------------------------------------------------------------------

ConfigId = Annotated[str, StringConstraints(pattern=anchored(CONFIG_ID))]


class FunnelAnswer(_Answer):
    id: ConfigId
    steps: list[ConfigId] = Field(min_length=1, max_length=256)


class VariantAnswer(_Answer):
    name: ConfigId
    weight: float = Field(gt=0, le=1e9, allow_inf_nan=False)


class ExperimentAnswer(_Answer):
    id: ConfigId
    funnel_id: ConfigId
    status: Literal["draft", "running", "stopped"]
    version: int = Field(ge=1, le=2**53)
    salt: str = Field("", pattern=f"^(?:{CONFIG_ID})?$")
    variants: list[VariantAnswer] = Field(min_length=2, max_length=256)


class FunnelConfigAnswer(_Answer):
    """hub/funnel_schemas.py ``config_document``."""

    assignment: str = Field(max_length=64)
    funnels: list[FunnelAnswer] = Field(max_length=4096)
    experiments: list[ExperimentAnswer] = Field(max_length=4096)

    @field_validator("assignment")
    @classmethod
    def _implemented(cls, value: str) -> str:
        if value != ALGORITHM:
            raise ValueError(f"names an assignment algorithm other than the one this node implements ({ALGORITHM})")
        return value
