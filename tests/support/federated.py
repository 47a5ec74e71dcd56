"""Federated runs as tests set them up: model specs, nodes with local data, Flower's verdict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_worker.audit import AuditLog
from edge_worker.store import LocalStore
from hub.apps import sign_apps, write_signed_apps
from hub.superlink import SuperLink
from models.funnel.featurizer import fit_spec
from models.task import ModelSpec
from nexus_wire.apps import SignedApps
from nexus_wire.datadir import EdgeDataDir
from tests.support.sessions import synthetic_sessions


def funnel_spec(sessions: list[dict[str, Any]]) -> ModelSpec:
    return ModelSpec("funnel", fit_spec(sessions, min_count=1), ("purchase",), {"hidden": 8})


def node_with_outcomes(root: Path, seed: int) -> tuple[Path, list[dict]]:
    """A node's data dir at ``root`` whose local store holds 200 labelled sessions of region ``seed``."""
    sessions, labels = synthetic_sessions(200, seed=seed, region=seed)
    store = LocalStore(root)
    for session, label in zip(sessions, labels):
        store.add_outcome(session, bool(label), visitor_id=f"v-{seed}-{len(session)}")
    store.close()
    return root, sessions


def flower_finished(link: SuperLink, run_id: int, timeout: float, where: str) -> str:
    """Flower's final status of a run (``finished:...``), polled from the SuperLink."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = link.run_status(run_id)
        if status.startswith("finished"):
            return status
        time.sleep(1)
    pytest.fail(f"Flower run {run_id} still {status!r} after {timeout:.0f}s; {where}")


def trust_hub_apps(edge_dir: Path, hub_key: Ed25519PrivateKey, apps: SignedApps | None = None) -> SignedApps:
    """What enrollment and the federation job leave in an edge's data dir: the hub key pinned on
    its audit log and the hub's signed app statements (by default: of the shipped Flower app)."""
    apps = apps if apps is not None else sign_apps(hub_key)
    with AuditLog(edge_dir) as audit:
        audit.pin_hub_key(hub_key.public_key(), "http://hub.invalid")
    write_signed_apps(EdgeDataDir(edge_dir).trusted_apps, apps)
    return apps
