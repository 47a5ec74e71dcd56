"""Signed tree heads and receipts: what the edge and the hub sign, send and check.

A node signs a tree head of its audit log after every append: Ed25519 over
:func:`tree_head_message`. It travels in heartbeats as ``{size, root, time, key_id,
signature}`` in the ``HEAD_*`` formats, which the edge's gateway and the hub both check.

A receipt says what the hub received from whom: a *binding* (:func:`http_binding`,
:func:`flower_binding`) plus ``time`` and ``key_id``; ``signature`` is Ed25519 over the
canonical JSON of the other members. Its ``format`` names the members:

- ``nexus-receipt/2``: a request the hub authenticated as a node: ``node`` (its id),
  ``method``, ``path`` (the request target as received: path and query, percent-encoded),
  ``sha256`` and ``bytes`` of the body as received. The hub sends it as the ``Nexus-Receipt``
  response header (base64 of its canonical JSON).
- ``nexus-flower-receipt/2``: a Flower reply the ServerApp received: ``node`` (Flower's node
  id, which the SuperLink authenticated), ``message_type``, ``message`` (the id of the
  instruction answered), ``sha256`` and ``bytes`` of the reply (federated/digest.py).
- no ``format`` member (:data:`LEGACY_RECEIPT_FORMAT`): receipts made before those, binding
  only ``sha256`` and ``bytes`` (and a Flower one ``message``). Old logs still verify with
  them; nothing accepts a new one.

The edge keeps a receipt beside the audit entry of that request once
:func:`binding_problem` finds it matches what the entry recorded.
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
#: the ``format`` of a receipt for an HTTP request, and of one for a Flower reply
RECEIPT_FORMAT = "nexus-receipt/2"
FLOWER_RECEIPT_FORMAT = "nexus-flower-receipt/2"
#: what :func:`receipt_format` calls a receipt without a ``format`` member (it binds no node or request)
LEGACY_RECEIPT_FORMAT = "nexus-receipt/1"

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


def http_binding(node: str | None, method: str, path: str, sha256: str, nbytes: int) -> dict[str, Any]:
    """What a receipt for an HTTP request binds. ``node`` None: a binding to check a receipt
    against where the entry could not record the node (:func:`binding_problem` skips it)."""
    return {"format": RECEIPT_FORMAT, "node": node, "method": method, "path": path, "sha256": sha256, "bytes": nbytes}


def flower_binding(node: int | None, message_type: str, message: str, sha256: str, nbytes: int) -> dict[str, Any]:
    """What a receipt for a Flower reply binds; ``node`` None as for :func:`http_binding`."""
    return {
        "format": FLOWER_RECEIPT_FORMAT,
        "node": node,
        "message_type": message_type,
        "message": message,
        "sha256": sha256,
        "bytes": nbytes,
    }


def sign_receipt(private_key: Ed25519PrivateKey, binding: Mapping[str, Any], time: str) -> dict[str, Any]:
    receipt: dict[str, Any] = {**binding, "time": time, "key_id": key_id(private_key.public_key())}
    receipt["signature"] = base64.b64encode(private_key.sign(receipt_message(receipt))).decode()
    return receipt


def receipt_format(receipt: Mapping[str, Any]) -> str:
    value = receipt.get("format", LEGACY_RECEIPT_FORMAT)
    return value if isinstance(value, str) else repr(value)


def binding_problem(receipt: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """Which member of ``expected`` (a binding) the receipt does not carry, or None. Members
    ``expected`` holds as None are not compared. The reason names the member, never the
    receipt's value: it goes into the audit log, which keeps no text a hub chose."""
    if receipt_format(receipt) != expected["format"]:
        return f"receipt format is not {expected['format']}"
    for name, value in expected.items():
        got = receipt.get(name)
        # type first: JSON's true must not pass for 1
        if value is not None and (type(got) is not type(value) or got != value):
            return f"receipt {name} does not match what was sent"
    return None


def legacy_problem(receipt: Mapping[str, Any], sha256: str, nbytes: int) -> str | None:
    """How a :data:`LEGACY_RECEIPT_FORMAT` receipt is checked: its body digest only."""
    if receipt.get("sha256") != sha256 or receipt.get("bytes") != nbytes:
        return "receipt sha256/bytes do not match the entry"
    return None


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
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: a hostile, deeply nested header
        return None
    return receipt if isinstance(receipt, dict) else None
