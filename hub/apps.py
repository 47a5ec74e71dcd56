"""The hub's signed statements of the Flower apps it submits (format: nexus_wire/apps.py).

The hub submits one app, the folder shipped in the ``federated`` package. Flower builds a FAB
from a folder deterministically, so the hub builds it once itself, signs the sha256 of its
bytes, and every later ``flwr run`` of that folder submits the very bytes signed. Edges fetch
the statements (``GET /v1/federation/apps``); the hub's own guard reads them from the file
:func:`write_signed_apps` keeps in the SuperLink's state dir.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.superlink import flower_app_dir
from nexus_service.keyfiles import write_private
from nexus_wire.apps import SignedApps, sign_app


def fab_sha256(app_dir: Path) -> str:
    """The digest Flower gives the FAB that ``flwr run APP_DIR`` submits."""
    # Flower's CLI package takes ~0.8 s to import: loaded on first use, by a hub with rounds only
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


def sign_apps(key: Ed25519PrivateKey, app_dirs: tuple[Path, ...] | None = None) -> SignedApps:
    dirs = app_dirs if app_dirs is not None else (flower_app_dir(),)
    return SignedApps(apps=tuple(sign_app(key, fab_sha256(d)) for d in dirs))


def write_signed_apps(path: Path, apps: SignedApps) -> None:
    write_private(path, apps.model_dump_json().encode())
