"""What each hub replica copies from the store every few seconds: the little state a
request answers from memory, which another replica may have changed.

- **The admin token.** ``nexus hub token rotate-admin`` on one replica swaps the store's hash
  of the token (hub/admin_rotation.py). Each replica compares its own token with that hash;
  when they differ it reads its token file again (a shared data dir, or a Secret updated in
  place) and takes the new token from there. When the file still holds the old one, the
  replica refuses the old token all the same and accepts the new one by its hash alone; its
  dashboard sessions, keyed by the token itself, then hold only on this replica until it is
  restarted with the new file (logged).
- **The signed Flower apps** (``GET /v1/federation/apps``): what the replica driving rounds
  signed and published (hub/driver.py), for replicas that do not drive.

Everything else a request needs is read from the store on every request (nodes, tokens,
registry, assignments, counters, experiments, runs, ended dashboard sessions), or is shared
through it (the rate-limit buckets of failures, hub/state.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from hub.auth import ADMIN_HASH_META, hash_secret
from hub.driver import APPS_META
from hub.state import Hub
from nexus_service.http import offload
from nexus_wire.apps import SignedApps
from nexus_wire.datadir import HubDataDir

log = logging.getLogger("nexus.hub.replicas")
SYNC_EVERY_S = 2.0


def sync(hub: Hub) -> None:
    """One pass (blocking: store reads)."""
    _admin_token(hub)
    if not hub.lease.held:
        _apps(hub)


def _admin_token(hub: Hub) -> None:
    stored = hub.store.get_meta(ADMIN_HASH_META)
    if stored is None or stored == hash_secret(hub.auth.admin_token) or stored == hub.auth.admin_hash:
        return
    try:
        on_disk = HubDataDir(hub.settings.data_dir).admin_token.read_text(encoding="utf-8").strip()
    except OSError:
        on_disk = ""
    if hash_secret(on_disk) == stored:
        hub.auth.use_admin_token(on_disk)
        log.info("the admin token was rotated on another replica; took the new one from the data dir")
        return
    # an unknowable random token in its place ends this replica's dashboard sessions and keys
    # new ones to it alone; the API checks the new token by the store's hash
    hub.auth.use_admin_token(secrets.token_urlsafe(32), admin_hash=stored)
    log.warning(
        "the admin token was rotated on another replica: this one now refuses the old token; restart it "
        "with the new admin.token so that its dashboard sessions hold on every replica"
    )


def _apps(hub: Hub) -> None:
    raw = hub.store.get_meta(APPS_META)
    if raw is not None and raw != hub.rounds.apps.model_dump_json():
        hub.rounds.apps = SignedApps.model_validate_json(raw)


async def _loop(hub: Hub) -> None:
    while True:
        try:
            await offload(sync, hub)
        except Exception:
            log.exception("replica sync failed; retrying")
        await asyncio.sleep(SYNC_EVERY_S)


def start_sync(hub: Hub) -> Callable[[], None]:
    """Start the loop in the running event loop (the hub's lifespan); returns its stop function."""
    task = asyncio.create_task(_loop(hub), name="nexus-replica-sync")

    def stop() -> None:
        task.cancel()

    return stop
