"""The hub's Ed25519 signing key file, shared by every replica of one store.

Replicas sharing one store must share this file (mount it as a secret): the store
records the key id of the first hub that used it and :func:`check_store_key` refuses
a replica with another key, since edges pin the key they enrolled with.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.store.base import Store
from models.errors import NexusError
from nexus_wire.datadir import HubDataDir
from nexus_wire.heads import key_id


def check_store_key(store: Store, key: Ed25519PrivateKey) -> None:
    mine = key_id(key.public_key())
    theirs = store.claim_meta("hub_key_id", mine)
    if theirs != mine:
        raise NexusError(
            f"this store was initialised by a hub with key {theirs}, this hub's key is {mine}; "
            f"copy {HubDataDir(Path()).signing_key.name} from that hub's data dir"
        )
