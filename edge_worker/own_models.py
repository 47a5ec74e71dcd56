"""The model repository of a node with a hub: a folder of its own, seeded with the shipped bundles.

The hub's rollouts (new versions, signatures of the shipped ones) are written into the
repository, so a node that syncs never serves from the package's bundles: those are shared
by every edge on the host, and inside site-packages once installed. Its data dir's ``models``
folder starts as a copy of them, so the node serves before its first sync.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from edge_worker.settings import EdgeSettings
from models.bundle import DEFAULT_REPOSITORY
from nexus_wire.datadir import EdgeDataDir

log = logging.getLogger("nexus.edge.models")


def prepare(settings: EdgeSettings) -> bool:
    """Seed the data dir's repository when this node syncs with a hub and has none yet; True if seeded."""
    own = EdgeDataDir(settings.data_dir).models
    if not settings.hub_url or settings.models_dir != own or own.exists():
        return False
    return seed(own)


def seed(target: Path, source: Path = DEFAULT_REPOSITORY) -> bool:
    """Copy ``source`` to ``target`` (dirs 0700, files 0600: it lives in a private data dir),
    renamed into place whole, so worker processes seeding at once leave one complete copy."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_symlink() or any(part.startswith(".") for part in relative.parts):
                continue  # a half-written version of a training run, or anything else hidden
            copy = tmp / relative
            if path.is_dir():
                copy.mkdir(mode=0o700)
            elif path.is_file():
                shutil.copyfile(path, copy)
                copy.chmod(0o600)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.is_dir():  # another worker seeded it first
            return False
        raise
    log.info("model repository %s seeded with the shipped bundles", target)
    return True
