"""This node's identity at the hub: node id, node secret and the hub's pinned Ed25519
public key, kept in ``<data dir>/hub-identity.json`` (0600).

The key is pinned at enrollment (trust on first use, the enrollment token being the
proof that this is our hub); from then on only bundles signed by that key install.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.errors import NexusError
from nexus_service.keyfiles import public_key_from_b64, write_private_json
from nexus_wire.datadir import EdgeDataDir


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    node_secret: str
    hub_public_key: str  # raw Ed25519 key, base64
    tags: dict[str, str]

    def public_key(self) -> Ed25519PublicKey:
        return public_key_from_b64(self.hub_public_key)

    def credential(self) -> str:
        return f"node.{self.node_id}.{self.node_secret}"


def load_identity(data_dir: Path) -> NodeIdentity | None:
    path = EdgeDataDir(Path(data_dir)).identity
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
    write_private_json(EdgeDataDir(Path(data_dir)).identity, asdict(identity))
