"""The edge's Flower SuperNode as a supervised child of the running node.

It starts once the node is enrolled (the sync agent's job), because its ``--node-config``
carries the enrollment tags (``region`` ...) the hub's node selection matches, beside the
data dir the ClientApp reads the local store from. With ``--superlink auto`` it joins the
SuperLink the hub names in its heartbeat replies (the sync agent hands it over on the
node's :class:`~edge_worker.hub_link.HubLink`), and follows it if it moves; without
``superlink_root_cert`` the child SuperNode has no TLS, so only a loopback SuperLink is
taken that way. The SuperNode runs only apps the hub signed (edge_worker/supernode.py): this
job fetches the hub's signed app statements before the SuperNode starts and every
``APPS_EVERY_S`` after, keeps those the pinned hub key verifies in ``EdgeDataDir.trusted_apps``
for the app guard (which checks them again), and keeps the last good list while the hub is
unreachable. Only the node's
leader runs it (``--workers`` > 1 share the dir; a follower takes over when the leader
dies). It is restarted if it dies and stopped (SIGTERM: it signs off from the SuperLink)
when the node shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from edge_worker.hub_answers import SUPERLINK_ADDRESS
from edge_worker.hub_link import HubLink
from edge_worker.identity import NodeIdentity
from edge_worker.state import EdgeState
from edge_worker.supernode import SuperNode, SuperNodeConfig
from models.errors import NexusError
from nexus_service.keyfiles import write_private
from nexus_wire.apps import SignedApps
from nexus_wire.names import NODE_ID, fullmatch

log = logging.getLogger("nexus.edge.supernode")
AUTO = "auto"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
SUPERVISE_EVERY_S = 5.0
ENROLL_POLL_S = 1.0
#: how often the hub's signed app list is fetched again (a hub upgrade signs a new FAB)
APPS_EVERY_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _target(configured: str, named: str | None, tls: bool = False) -> str | None:
    """The SuperLink to join: the configured one, or with ``auto`` the one the hub named (on
    loopback only, unless the SuperNode joins over TLS)."""
    if configured != AUTO:
        return configured
    match = SUPERLINK_ADDRESS.fullmatch(named or "")
    if match is None:
        return None
    if match["host"] not in _LOOPBACK and not tls:
        log.error(
            "the hub names the SuperLink %s, which is not on loopback: the child SuperNode has no TLS, so it is not "
            "started (run the SuperNode beside the node with TLS, see docs/deploy.md)",
            named,
        )
        return None
    return named


async def sync_apps(link: HubLink, identity: NodeIdentity) -> bool:
    """Fetch the hub's signed apps and keep those the pinned key verifies; False when the hub
    could not be asked (the list kept from before stays in force)."""
    try:
        fetched = await link.gateway.fetch_signed_apps()
    except NexusError as exc:  # unreachable, refused, or an answer that is not a list of statements
        log.warning("the hub's signed apps: %s", exc)
        return False
    key = identity.public_key()
    kept = SignedApps(apps=tuple(app for app in fetched.apps if app.verifies(key)))
    if len(kept.apps) < len(fetched.apps):
        log.error(
            "the hub sent %d app statement(s) its pinned key did not sign: ignored", len(fetched.apps) - len(kept.apps)
        )
    await asyncio.to_thread(write_private, link.data_dir.trusted_apps, kept.model_dump_json().encode())
    return True


async def run(state: EdgeState, link: HubLink) -> None:
    settings = state.settings
    assert settings.superlink is not None
    data_dir = link.data_dir
    tls = settings.superlink_root_cert is not None
    while True:  # the leader only (a follower waits to take over), enrolled, with a SuperLink to join
        identity = link.identity if link.leading else None
        address = None if identity is None else _target(settings.superlink, link.superlink, tls)
        if identity is not None and address is not None:
            break
        await link.wait_for_change(ENROLL_POLL_S)
    tags = identity.tags
    # an id the hub would not have assigned stays off the node config: the hub falls back to Flower's id
    nexus_node = identity.node_id if fullmatch(NODE_ID, identity.node_id) else None
    if nexus_node is None:
        log.warning(
            "node id %r is not a hub-assigned id: rounds will name this node by its Flower id", identity.node_id
        )

    def supernode(address: str) -> SuperNode:
        return SuperNode(
            SuperNodeConfig(
                address,
                data_dir.root,
                port=settings.supernode_port or _free_port(),
                tags=tags,
                nexus_node=nexus_node,
                root_certificates=settings.superlink_root_cert,
                auth_key=settings.supernode_auth_key,
            )
        )

    node = supernode(address)
    apps_at = time.monotonic() if await sync_apps(link, identity) else 0.0
    try:
        while True:
            if time.monotonic() - apps_at >= APPS_EVERY_S and await sync_apps(link, identity):
                apps_at = time.monotonic()
            moved = _target(settings.superlink, link.superlink, tls)
            if moved is not None and moved != node.config.superlink:
                log.info("the hub's SuperLink moved to %s: the SuperNode follows", moved)
                await asyncio.to_thread(node.stop)
                node = supernode(moved)
            try:
                if node.process is None:
                    await asyncio.to_thread(node.start, 60.0)
                    log.info(
                        "flower supernode joined %s with tags %s (log in %s)",
                        node.config.superlink,
                        tags,
                        data_dir.supernode_log,
                    )
                elif await asyncio.to_thread(node.supervise):
                    log.warning("flower supernode had died; restarted (restart %d)", node.restarts)
            except NexusError as exc:
                log.error("flower supernode: %s", exc)
                await asyncio.to_thread(node.stop, 5.0, True)  # start afresh on the next pass
            await link.wait_for_change(SUPERVISE_EVERY_S)
    finally:
        await asyncio.to_thread(node.stop)
