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

from hub.store.base import NodeCheck, NodeRecord, Store, check_credential
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


@dataclass(frozen=True)
class NodeCredential:
    """A node credential as a request shows it, not yet checked: the id and the secret's sha256."""

    node_id: str
    secret_hash: str


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

    def use_admin_token(self, admin_token: str, admin_hash: str | None = None) -> None:
        """From now on only ``admin_token`` is the admin's (``nexus hub token rotate-admin``);
        or, given ``admin_hash``, the token of that hash (another replica rotated it, and this
        one cannot read the new token: hub/replicas.py)."""
        self.admin_token = admin_token  # the dashboard derives its session key from it
        self._admin_hash = admin_hash or hash_secret(admin_token)

    @property
    def admin_hash(self) -> str:
        return self._admin_hash

    def parse(self, authorization: str | None) -> Principal | NodeCredential:
        """The admin's ``Principal``, or the node credential the store still has to check;
        401 for no bearer token, a malformed node credential or a wrong admin token."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "missing bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        if token.startswith(NODE_PREFIX):
            node_id, _, secret = token.removeprefix(NODE_PREFIX).partition(".")
            if not node_id or not secret:
                raise AuthError(401, "unknown node credential")
            return NodeCredential(node_id, hash_secret(secret))
        if hmac.compare_digest(self._admin_hash, hash_secret(token)):
            return Principal("admin")
        raise AuthError(401, "invalid token")

    @staticmethod
    def node_principal(check: NodeCheck) -> Principal:
        """The node's ``Principal`` for a checked credential; 401 otherwise."""
        if check.status == "revoked":
            raise RevokedCredential(401, "this node's credential was revoked; enroll it again with a new token")
        if check.node is None:
            raise AuthError(401, "unknown node credential")
        return Principal("node", check.node)

    def identify(self, authorization: str | None) -> Principal:
        """Blocking (reads the store for node credentials); raise 401 when unknown."""
        found = self.parse(authorization)
        if isinstance(found, Principal):
            return found
        return self.node_principal(check_credential(self.store.get_node(found.node_id), found.secret_hash))

    async def identify_async(self, authorization: str | None) -> Principal:
        """:meth:`identify` on the event loop: the store's one-round-trip check (hub/store/base.py)."""
        found = self.parse(authorization)
        if isinstance(found, Principal):
            return found
        return self.node_principal(await self.store.check_node(found.node_id, found.secret_hash))

    def require(self, authorization: str | None, *roles: Role) -> Principal:
        return has_role(self.identify(authorization), *roles)


def has_role(principal: Principal, *roles: Role) -> Principal:
    """``principal`` when it has one of ``roles``; 403 otherwise."""
    if principal.role not in roles:
        raise AuthError(403, f"this endpoint needs the {' or '.join(roles)} role")
    return principal
