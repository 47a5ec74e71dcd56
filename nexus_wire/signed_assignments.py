"""The hub's assignment document: which model version one node is to serve, signed by the hub.

``GET /v1/nodes/me/assignments`` answers with one JSON object::

    {"format": "nexus-assignments/1", "node_id": "n-...", "issued_at": 1767225600.123456,
     "models": {"funnel": {"version": "3", "archive_sha256": "<64 hex>", "archive_bytes": 40960}},
     "key_id": "<16 hex>", "signature": "<base64 Ed25519>"}

``signature`` is the hub's Ed25519 signature (the key that signs bundles, which an edge pins at
enrollment) over the canonical JSON (:func:`nexus_wire.heads.canonical_json`) of every other
member. It binds the node, so one node's document cannot be handed to another, and the time it
was issued, so an edge refuses a document older than the last one it adopted: a captured
document cannot roll a node back. An edge acts on nothing in it before :class:`AssignmentDocument`
validated every member and the signature verified. A new layout gets a new ``format`` name.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from nexus_wire.heads import HEAD_KEY_ID, HEAD_SIGNATURE, canonical_json, key_id
from nexus_wire.names import CONFIG_ID, MODEL_NAME, VERSION, anchored

FORMAT = "nexus-assignments/1"
#: a sha256 as the hub names a bundle archive: exactly 64 lowercase hex digits
DIGEST = r"[0-9a-f]{64}"
#: more models than any node serves; a longer list is not a document this format describes
MAX_MODELS = 64
#: a bundle archive (the hub's upload limit is far below this)
MAX_ARCHIVE_BYTES = 1 << 34
#: the largest document an edge reads (64 models fit in a tenth of it)
MAX_DOCUMENT_BYTES = 64 << 10
#: issued_at is unix seconds: anything past the year 5000 is not a time
_MAX_TIME = 1e11


class _Wire(BaseModel):
    # strict: a number where a string belongs (or the reverse) is refused, never coerced
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ModelAssignment(_Wire):
    version: str = Field(pattern=anchored(VERSION))
    archive_sha256: str = Field(pattern=anchored(DIGEST))
    archive_bytes: int = Field(ge=1, le=MAX_ARCHIVE_BYTES)


ModelName = Annotated[str, StringConstraints(pattern=anchored(MODEL_NAME))]


class AssignmentDocument(_Wire):
    format: Literal["nexus-assignments/1"]
    node_id: str = Field(pattern=anchored(CONFIG_ID))
    issued_at: float = Field(ge=0, le=_MAX_TIME, allow_inf_nan=False)
    models: dict[ModelName, ModelAssignment] = Field(max_length=MAX_MODELS)
    key_id: str = Field(pattern=anchored(HEAD_KEY_ID))
    signature: str = Field(pattern=anchored(HEAD_SIGNATURE))


def signed_message(document: Mapping[str, Any]) -> bytes:
    """What the hub signs: the canonical JSON of the document without its ``signature``."""
    return canonical_json({k: v for k, v in document.items() if k != "signature"}).encode("utf-8")


def sign_document(
    private_key: Ed25519PrivateKey, node_id: str, models: Mapping[str, Mapping[str, Any]], issued_at: float
) -> dict[str, Any]:
    """The signed document for ``node_id``; checked against the format before it is signed,
    so the hub cannot hand out a document its edges would refuse."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "node_id": node_id,
        "issued_at": float(issued_at),
        "models": {name: dict(entry) for name, entry in models.items()},
        "key_id": key_id(private_key.public_key()),
    }
    document["signature"] = base64.b64encode(private_key.sign(signed_message(document))).decode("ascii")
    AssignmentDocument.model_validate(document)
    return document


def signature_verifies(document: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Whether ``document`` (as parsed, every member) carries ``public_key``'s signature."""
    if document.get("key_id") != key_id(public_key):
        return False
    try:
        raw = base64.b64decode(str(document.get("signature", "")), validate=True)
        public_key.verify(raw, signed_message(document))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
