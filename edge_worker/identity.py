"""This node's identity at the hub: node id, node secret and the hub's pinned Ed25519
public key, kept in ``<data dir>/hub-identity.json`` (0600).

The key is pinned at enrollment (trust on first use, the enrollment token being the
proof that this is our hub); from then on only bundles signed by that key install.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.errors import NexusError

IDENTITY_FILE = "hub-identity.json"


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    node_secret: str
    hub_public_key: str  # raw Ed25519 key, base64
    tags: dict[str, str]

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(self.hub_public_key, validate=True))

    def credential(self) -> str:
        return f"node.{self.node_id}.{self.node_secret}"


def write_private_json(path: Path, obj: Any) -> None:
    """Atomically replace ``path`` with JSON, readable by the owner only from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_identity(data_dir: Path) -> NodeIdentity | None:
    path = Path(data_dir) / IDENTITY_FILE
    try:
        raw = json.loads(path.read_text())
        identity = NodeIdentity(
            str(raw["node_id"]), str(raw["node_secret"]), str(raw["hub_public_key"]), dict(raw.get("tags", {}))
        )
        identity.public_key()
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise NexusError(f"{path} is corrupt ({exc}); delete it to enroll again with a new token") from None
    return identity


def save_identity(data_dir: Path, identity: NodeIdentity) -> None:
    write_private_json(Path(data_dir) / IDENTITY_FILE, asdict(identity))
