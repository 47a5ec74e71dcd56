"""Signed receipts: the hub's proof that it received a request body, checked by the edge.

A receipt is ``{"sha256", "bytes", "time", "key_id", "signature"}``: the sha256 and length
of the request body the hub read, when, and which key signed; ``signature`` is Ed25519 over
the canonical JSON of the other members. The hub attaches it to every node request as the
``Nexus-Receipt`` response header (base64 of the receipt's canonical JSON), added by
:class:`ReceiptMiddleware`; the edge keeps it beside the audit entry of that request.

Shared by the hub and the edge (neither imports the other), so this module imports
nothing of the project but :mod:`models.bundle` and :mod:`models.errors`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.bundle import key_id
from models.errors import NexusError

HEADER = "Nexus-Receipt"
#: names the hub's signing key file for the ServerApp, which signs receipts for Flower replies
KEY_ENV = "NEXUS_RECEIPT_KEY"

# A node's signed audit tree head as it travels in heartbeats, checked by the edge's gateway
# (edge_worker/payloads.py) and the hub (hub/schemas.py) alike: a hex sha256 root, key_id as
# models.bundle.key_id makes it, time as utc_now writes it, base64 of a 64-byte signature.
HEAD_ROOT = r"[0-9a-f]{64}"
HEAD_KEY_ID = r"[0-9a-f]{16}"
HEAD_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
HEAD_SIGNATURE = r"[A-Za-z0-9+/]{85}[AQgw]=="
#: bodies beyond this are not drained after the app answered: the receipt then covers what was read
DRAIN_LIMIT = 1 << 20

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


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


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise NexusError(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise NexusError(f"{path} is not an Ed25519 private key")
    return key


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


class ReceiptMiddleware:
    """Pure ASGI: hashes the request body as the app reads it and adds a signed receipt to
    the response of every request ``wants(scope)`` selects. A body the app did not read
    (a 401 before parsing) is drained first, so the receipt still covers all of it."""

    def __init__(self, app: ASGIApp, key: Ed25519PrivateKey, wants: Callable[[Scope], bool]) -> None:
        self.app = app
        self.key = key
        self.wants = wants

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.wants(scope):
            await self.app(scope, receive, send)
            return
        digest, size, done = hashlib.sha256(), 0, False

        async def counting_receive() -> MutableMapping[str, Any]:
            nonlocal size, done
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                digest.update(body)
                size += len(body)
                done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                done = True
            return message

        async def signing_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                while not done and size <= DRAIN_LIMIT:
                    await counting_receive()
                receipt = sign_receipt(self.key, digest.hexdigest(), size, utc_now())
                message["headers"] = [
                    *message.get("headers", []),
                    (HEADER.lower().encode(), encode_header(receipt).encode()),
                ]
            await send(message)

        await self.app(scope, counting_receive, signing_send)
