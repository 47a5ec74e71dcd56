"""Who is calling: the operator (admin token) or an enrolled node (node id + secret).

The admin token is created on first start in a 0600 file of the data dir and never
logged. Node secrets and enrollment tokens are random 256-bit strings, so the store
keeps only their sha256 (a slow hash buys nothing against guessing 2^256).
Missing or unknown credentials are 401; a valid credential without the role is 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hub.store.base import NodeRecord, Store
from models.errors import NexusError
from nexus_service.http import ApiError
from nexus_service.keyfiles import load_or_create_token
from nexus_wire.datadir import HubDataDir

NODE_PREFIX = "node."
Role = Literal["admin", "node"]


class AuthError(ApiError):
    """401 (no known credential) or 403 (a credential without the role)."""


class RevokedCredential(AuthError):
    """401 for a node's real but revoked credential: not a guess (no rate-limit token spent)."""


@dataclass(frozen=True)
class Principal:
    role: Role
    node: NodeRecord | None = None


def new_secret() -> str:
    # The prefix keeps a token from starting with "-" (a CLI would read it as a flag) and
    # makes a leaked one easy to spot for secret scanners.
    return "nx_" + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def load_or_create_admin_token(data_dir: Path) -> str:
    return load_or_create_token(HubDataDir(Path(data_dir)).admin_token, new_secret)


def node_credential(node_id: str, secret: str) -> str:
    return f"{NODE_PREFIX}{node_id}.{secret}"


ADMIN_HASH_META = "admin_token_sha256"


def check_store_admin(store: Store, admin_token: str) -> None:
    """Replicas of one store must share the admin token file, like the signing key."""
    if store.claim_meta(ADMIN_HASH_META, hash_secret(admin_token)) != hash_secret(admin_token):
        raise NexusError(
            "this store belongs to a hub with another admin token; "
            f"copy {HubDataDir(Path()).admin_token.name} from its data dir"
        )


class Authenticator:
    def __init__(self, store: Store, admin_token: str) -> None:
        self.store = store
        self.use_admin_token(admin_token)

    def use_admin_token(self, admin_token: str) -> None:
        """From now on only ``admin_token`` is the admin's (``nexus hub token rotate-admin``)."""
        self.admin_token = admin_token  # the dashboard derives its session key from it
        self._admin_hash = hash_secret(admin_token)

    def identify(self, authorization: str | None) -> Principal:
        """Blocking (reads the store for node credentials); raise 401 when unknown."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "missing bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        if token.startswith(NODE_PREFIX):
            node_id, _, secret = token.removeprefix(NODE_PREFIX).partition(".")
            node = self.store.get_node(node_id) if node_id and secret else None
            if node is None or not hmac.compare_digest(node.secret_hash, hash_secret(secret)):
                raise AuthError(401, "unknown node credential")
            if node.revoked_at is not None:
                raise RevokedCredential(401, "this node's credential was revoked; enroll it again with a new token")
            return Principal("node", node)
        if hmac.compare_digest(self._admin_hash, hash_secret(token)):
            return Principal("admin")
        raise AuthError(401, "invalid token")

    def require(self, authorization: str | None, *roles: Role) -> Principal:
        principal = self.identify(authorization)
        if principal.role not in roles:
            raise AuthError(403, f"this endpoint needs the {' or '.join(roles)} role")
        return principal
