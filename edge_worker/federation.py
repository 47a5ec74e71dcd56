"""The edge's Flower SuperNode as a supervised child of the running node.

It starts once the node is enrolled (the sync agent's job), because its ``--node-config``
carries the enrollment tags (``region`` ...) the hub's node selection matches, beside the
data dir the ClientApp reads the local store from. With ``--superlink auto`` it joins the
SuperLink the hub names in its heartbeat replies (the sync agent writes it to
``hub-superlink`` in the data dir, which every worker sees), and follows it if it moves;
the child SuperNode has no TLS, so only a loopback SuperLink is taken that way. One process per data dir runs it
(``--workers`` > 1 share the dir): the holder of ``supernode.lock``. It is restarted if it
dies and stopped (SIGTERM: it signs off from the SuperLink) when the node shuts down.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import socket
from pathlib import Path
from typing import IO, TYPE_CHECKING

from edge_worker.identity import load_identity
from edge_worker.supernode import SuperNode, SuperNodeConfig
from models.errors import NexusError

if TYPE_CHECKING:
    from edge_worker.state import EdgeState

log = logging.getLogger("nexus.edge.supernode")
LOCK_FILE = "supernode.lock"
LEARNED_FILE = "hub-superlink"
AUTO = "auto"
_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]{2,39}\]):(?P<port>[0-9]{1,5})")
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
SUPERVISE_EVERY_S = 5.0
ENROLL_POLL_S = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lock(data_dir: Path) -> IO[bytes] | None:
    """The data dir's SuperNode lock, or None when another process of this node holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fh = open(data_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held open: the lock lives as long as the file
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def remember_superlink(data_dir: Path, address: object) -> bool:
    """Keep the SuperLink address the hub named (its heartbeat reply); True when it changed."""
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address) or learned_superlink(data_dir) == address:
        return False
    tmp = Path(data_dir) / f"{LEARNED_FILE}.tmp"
    tmp.write_text(address, encoding="utf-8")
    os.replace(tmp, Path(data_dir) / LEARNED_FILE)
    return True


def learned_superlink(data_dir: Path) -> str | None:
    try:
        return (Path(data_dir) / LEARNED_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def _target(configured: str, data_dir: Path) -> str | None:
    """The SuperLink to join: the configured one, or with ``auto`` the loopback one the hub named."""
    if configured != AUTO:
        return configured
    address = learned_superlink(data_dir)
    match = _ADDRESS.fullmatch(address or "")
    if match is None:
        return None
    if match["host"] not in _LOOPBACK:
        log.error(
            "the hub names the SuperLink %s, which is not on loopback: the child SuperNode has no TLS, so it is not started "
            "(run the SuperNode beside the node with TLS, see docs/deploy.md)",
            address,
        )
        return None
    return address


async def run(state: EdgeState) -> None:
    settings = state.settings
    assert settings.superlink is not None
    data_dir = Path(settings.data_dir)
    lock = _lock(data_dir)
    if lock is None:
        await asyncio.Event().wait()  # a sibling worker runs the SuperNode; idle until shutdown
    identity, address = load_identity(data_dir), _target(settings.superlink, data_dir)
    while identity is None or address is None:
        await asyncio.sleep(ENROLL_POLL_S)
        identity, address = load_identity(data_dir), _target(settings.superlink, data_dir)

    def supernode(address: str) -> SuperNode:
        return SuperNode(
            SuperNodeConfig(address, data_dir, port=settings.supernode_port or _free_port(), tags=identity.tags)
        )

    node = supernode(address)
    try:
        while True:
            moved = _target(settings.superlink, data_dir)
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
                        identity.tags,
                        data_dir / "supernode.log",
                    )
                elif await asyncio.to_thread(node.supervise):
                    log.warning("flower supernode had died; restarted (restart %d)", node.restarts)
            except NexusError as exc:
                log.error("flower supernode: %s", exc)
                await asyncio.to_thread(node.stop, 5.0, True)  # start afresh on the next pass
            await asyncio.sleep(SUPERVISE_EVERY_S)
    finally:
        await asyncio.to_thread(node.stop)
        lock.close()
