"""The edge's Flower SuperNode as a supervised child of the running node.

It starts once the node is enrolled (the sync agent's job), because its ``--node-config``
carries the enrollment tags (``region`` ...) the hub's node selection matches, beside the
data dir the ClientApp reads the local store from. One process per data dir runs it
(``--workers`` > 1 share the dir): the holder of ``supernode.lock``. It is restarted if it
dies and stopped (SIGTERM: it signs off from the SuperLink) when the node shuts down.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
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


async def run(state: EdgeState) -> None:
    settings = state.settings
    assert settings.superlink is not None
    data_dir = Path(settings.data_dir)
    lock = _lock(data_dir)
    if lock is None:
        await asyncio.Event().wait()  # a sibling worker runs the SuperNode; idle until shutdown
    identity = load_identity(data_dir)
    while identity is None:
        await asyncio.sleep(ENROLL_POLL_S)
        identity = load_identity(data_dir)
    node = SuperNode(SuperNodeConfig(settings.superlink, data_dir, port=settings.supernode_port or _free_port(), tags=identity.tags))
    try:
        while True:
            try:
                if node.process is None:
                    await asyncio.to_thread(node.start, 60.0)
                    log.info("flower supernode joined %s with tags %s (log in %s)", settings.superlink, identity.tags, data_dir / "supernode.log")
                elif await asyncio.to_thread(node.supervise):
                    log.warning("flower supernode had died; restarted (restart %d)", node.restarts)
            except NexusError as exc:
                log.error("flower supernode: %s", exc)
                await asyncio.to_thread(node.stop, 5.0, True)  # start afresh on the next pass
            await asyncio.sleep(SUPERVISE_EVERY_S)
    finally:
        await asyncio.to_thread(node.stop)
        lock.close()
