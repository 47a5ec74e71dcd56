"""The hub's Ed25519 signing key: created on first start, 0600 in the data dir.

Replicas sharing one store must share this file (mount it as a secret): the store
records the key id of the first hub that used it and :func:`check_store_key` refuses
a replica with another key, since edges pin the key they enrolled with.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hub.secrets_file import read_or_create
from hub.store.base import Store
from models.bundle import key_id
from models.errors import NexusError
from models.receipts import load_signing_key

KEY_FILE = "hub-signing-key.pem"


def load_or_create_key(data_dir: Path) -> Ed25519PrivateKey:
    def make() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    read_or_create(Path(data_dir) / KEY_FILE, make)
    return load_signing_key(Path(data_dir) / KEY_FILE)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as exc:
        raise NexusError(f"malformed hub public key ({exc})") from None


def check_store_key(store: Store, key: Ed25519PrivateKey) -> None:
    mine = key_id(key.public_key())
    theirs = store.claim_meta("hub_key_id", mine)
    if theirs != mine:
        raise NexusError(
            f"this store was initialised by a hub with key {theirs}, this hub's key is {mine}; "
            f"copy {KEY_FILE} from that hub's data dir"
        )
