"""Federated runs as tests set them up: model specs, nodes with local data, Flower's verdict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge_worker.store import LocalStore
from hub.superlink import SuperLink
from models.funnel.featurizer import fit_spec
from models.task import ModelSpec
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
