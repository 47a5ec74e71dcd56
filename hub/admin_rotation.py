"""Rotating the admin token (``POST /v1/admin/rotate``, ``nexus hub token rotate-admin``).

The token is in two places that cannot change in one step: the data dir's ``admin.token`` and
the store's hash of it (what makes a store this hub's, hub.auth.check_store_admin). So the new
token is first written beside the old one (``admin.token.next``), then the store's hash is
compare-and-set from the old token's to the new one's, then the file is renamed over
``admin.token``. A crash between two steps is finished at the next start (``finish_rotation``):
the store's hash says which token won. Other replicas keep the old token until they restart
with the new file (they then refuse the store until it is copied to their data dir).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hub.auth import ADMIN_HASH_META, Authenticator, hash_secret, new_secret
from hub.store.base import Store
from nexus_service.http import ApiError
from nexus_service.keyfiles import write_private
from nexus_wire.datadir import HubDataDir

_rotating = threading.Lock()  # two rotations at once would share admin.token.next


def rotate_admin(store: Store, data_dir: Path, auth: Authenticator) -> str:
    """Blocking: make, install and return a new admin token; the old one is refused from now on."""
    paths = HubDataDir(Path(data_dir))
    with _rotating:
        new = new_secret()
        write_private(paths.admin_token_next, new.encode())
        if not store.swap_meta(ADMIN_HASH_META, hash_secret(auth.admin_token), hash_secret(new)):
            paths.admin_token_next.unlink(missing_ok=True)
            raise ApiError(
                409, "the store holds another admin token (another replica rotated it); restart this hub with it"
            )
        os.replace(paths.admin_token_next, paths.admin_token)
        auth.use_admin_token(new)
        return new


def finish_rotation(store: Store, data_dir: Path) -> None:
    """At start: complete a rotation that reached the store, drop one that did not."""
    paths = HubDataDir(Path(data_dir))
    try:
        pending = paths.admin_token_next.read_text().strip()
    except FileNotFoundError:
        return
    if pending and store.get_meta(ADMIN_HASH_META) == hash_secret(pending):
        os.replace(paths.admin_token_next, paths.admin_token)
    else:
        paths.admin_token_next.unlink(missing_ok=True)
