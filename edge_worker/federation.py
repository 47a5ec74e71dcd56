"""The edge's Flower SuperNode as a supervised child of the running node.

It starts once the node is enrolled (the sync agent's job), because its ``--node-config``
carries the enrollment tags (``region`` ...) the hub's node selection matches, beside the
data dir the ClientApp reads the local store from. With ``--superlink auto`` it joins the
SuperLink the hub names in its heartbeat replies (the sync agent hands it over on the
node's :class:`~edge_worker.hub_link.HubLink`), and follows it if it moves; the child
SuperNode has no TLS, so only a loopback SuperLink is taken that way. Only the node's
leader runs it (``--workers`` > 1 share the dir; a follower takes over when the leader
dies). It is restarted if it dies and stopped (SIGTERM: it signs off from the SuperLink)
when the node shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from edge_worker.hub_link import SUPERLINK_ADDRESS, HubLink
from edge_worker.state import EdgeState
from edge_worker.supernode import SuperNode, SuperNodeConfig
from models.errors import NexusError

log = logging.getLogger("nexus.edge.supernode")
AUTO = "auto"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
SUPERVISE_EVERY_S = 5.0
ENROLL_POLL_S = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _target(configured: str, named: str | None) -> str | None:
    """The SuperLink to join: the configured one, or with ``auto`` the loopback one the hub named."""
    if configured != AUTO:
        return configured
    match = SUPERLINK_ADDRESS.fullmatch(named or "")
    if match is None:
        return None
    if match["host"] not in _LOOPBACK:
        log.error(
            "the hub names the SuperLink %s, which is not on loopback: the child SuperNode has no TLS, so it is not "
            "started (run the SuperNode beside the node with TLS, see docs/deploy.md)",
            named,
        )
        return None
    return named


async def run(state: EdgeState, link: HubLink) -> None:
    settings = state.settings
    assert settings.superlink is not None
    data_dir = link.data_dir
    while True:  # the leader only (a follower waits to take over), enrolled, with a SuperLink to join
        identity = link.identity if link.leading else None
        address = None if identity is None else _target(settings.superlink, link.superlink)
        if identity is not None and address is not None:
            break
        await link.wait_for_change(ENROLL_POLL_S)
    tags = identity.tags

    def supernode(address: str) -> SuperNode:
        return SuperNode(
            SuperNodeConfig(address, data_dir.root, port=settings.supernode_port or _free_port(), tags=tags)
        )

    node = supernode(address)
    try:
        while True:
            moved = _target(settings.superlink, link.superlink)
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
