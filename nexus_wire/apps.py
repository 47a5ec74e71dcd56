"""The hub's signed statement that a Flower app is its own: the only apps a guard launches.

Flower names an app by its FAB's digest: the sha256 of the FAB's bytes, which its state
computes from the content and files FABs under (a FAB is deterministic: ``flwr run`` of the
same folder twice gives the same bytes). The hub signs one statement per app it submits,
Ed25519 over :func:`app_message`, and serves the list at ``GET /v1/federation/apps``; the
edge keeps the list it fetched in its data dir (``EdgeDataDir.trusted_apps``), the hub in
its SuperLink's (``SuperLinkDir.trusted_apps``). The guard (federated/app_guard.py) checks
every statement again with the key it trusts (on an edge the hub key pinned at enrollment)
before it launches a task of that FAB, and launches nothing else.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from nexus_wire.heads import HEAD_KEY_ID, HEAD_SIGNATURE, canonical_json, key_id
from nexus_wire.names import anchored

#: the ``format`` member of what the hub signs for an app: a new layout gets a new name
APP_FORMAT = "nexus-fab/1"
#: a FAB's digest as Flower writes it: 64 lowercase hex digits
FAB_SHA256 = r"[0-9a-f]{64}"
#: how many apps one list may hold (the hub submits one; room for an upgrade's overlap)
MAX_APPS = 16


def app_message(fab_sha256: str) -> bytes:
    """What the hub signs for the app whose FAB has digest ``fab_sha256`` (domain-separated)."""
    return canonical_json({"format": APP_FORMAT, "fab_sha256": fab_sha256}).encode("utf-8")


class SignedApp(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fab_sha256: str = Field(pattern=anchored(FAB_SHA256))
    key_id: str = Field(pattern=anchored(HEAD_KEY_ID))
    signature: str = Field(pattern=anchored(HEAD_SIGNATURE))

    def verifies(self, public_key: Ed25519PublicKey) -> bool:
        if self.key_id != key_id(public_key):
            return False
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), app_message(self.fab_sha256))
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True


class SignedApps(BaseModel):
    """``GET /v1/federation/apps``, and the file a guard reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    apps: tuple[SignedApp, ...] = Field(default=(), max_length=MAX_APPS)

    def digests(self, public_key: Ed25519PublicKey) -> frozenset[str]:
        """The FAB digests whose statement ``public_key`` signed; the others count for nothing."""
        return frozenset(app.fab_sha256 for app in self.apps if app.verifies(public_key))


def sign_app(private_key: Ed25519PrivateKey, fab_sha256: str) -> SignedApp:
    signature = base64.b64encode(private_key.sign(app_message(fab_sha256))).decode()
    return SignedApp(fab_sha256=fab_sha256, key_id=key_id(private_key.public_key()), signature=signature)
