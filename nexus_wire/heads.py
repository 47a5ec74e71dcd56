"""Signed tree heads and receipts: what the edge and the hub sign, send and check.

A node signs a tree head of its audit log after every append: Ed25519 over
:func:`tree_head_message`. It travels in heartbeats as ``{size, root, time, key_id,
signature}`` in the ``HEAD_*`` formats, which the edge's gateway and the hub both check.

A receipt is ``{"sha256", "bytes", "time", "key_id", "signature"}``: the sha256 and length
of the request body the hub read, when, and which key signed; ``signature`` is Ed25519 over
the canonical JSON of the other members. The hub attaches it to every node request as the
``Nexus-Receipt`` response header (base64 of the receipt's canonical JSON); the edge keeps
it beside the audit entry of that request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HEADER = "Nexus-Receipt"
#: names the hub's signing key file for the ServerApp, which signs receipts for Flower replies
KEY_ENV = "NEXUS_RECEIPT_KEY"
#: the ``format`` member of a signed tree head's message: a new layout gets a new name
TREE_HEAD_FORMAT = "nexus-audit-sth/1"

# A signed tree head's members: a hex sha256 root, key_id as :func:`key_id` makes it, time
# as :func:`utc_now` writes it, base64 of a 64-byte signature.
HEAD_ROOT = r"[0-9a-f]{64}"
HEAD_KEY_ID = r"[0-9a-f]{16}"
HEAD_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
HEAD_SIGNATURE = r"[A-Za-z0-9+/]{85}[AQgw]=="


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short name of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()[:16]


def tree_head_message(size: int, root: str, time: str, signer: str) -> bytes:
    """What a node signs for a tree head of its audit log; ``signer`` is the key_id of its key."""
    body = {"format": TREE_HEAD_FORMAT, "size": size, "root": root, "time": time, "key_id": signer}
    return canonical_json(body).encode("utf-8")


def receipt_message(receipt: Mapping[str, Any]) -> bytes:
    """What the hub signs: canonical JSON of the receipt without its ``signature`` member."""
    return canonical_json({k: v for k, v in receipt.items() if k != "signature"}).encode("utf-8")


def sign_receipt(private_key: Ed25519PrivateKey, sha256: str, nbytes: int, time: str, **extra: str) -> dict[str, Any]:
    """``extra`` members (a Flower receipt's ``message``) are signed along with the rest."""
    receipt: dict[str, Any] = {
        "sha256": sha256,
        "bytes": nbytes,
        "time": time,
        "key_id": key_id(private_key.public_key()),
        **extra,
    }
    receipt["signature"] = base64.b64encode(private_key.sign(receipt_message(receipt))).decode()
    return receipt


def signature_verifies(receipt: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(str(receipt.get("signature", "")), validate=True), receipt_message(receipt))
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_header(receipt: Mapping[str, Any]) -> str:
    return base64.b64encode(canonical_json(dict(receipt)).encode("utf-8")).decode("ascii")


def decode_header(value: str) -> dict[str, Any] | None:
    """The receipt in a header value, or None when it is not one (a proxy mangled it)."""
    try:
        receipt = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error):
        return None
    return receipt if isinstance(receipt, dict) else None
