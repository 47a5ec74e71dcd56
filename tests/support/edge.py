"""An edge node's settings, data and model repository as tests build them (no tests here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edge_worker.hub_link import HubLink
from edge_worker.settings import EdgeSettings
from edge_worker.sync import Backoff, NodeStatus, SyncAgent
from models.bundle import DEFAULT_REPOSITORY, SIGNATURE, list_versions, read_manifest, verify_bundle, write_manifest

BUNDLES = DEFAULT_REPOSITORY

TEXTS = ["Thank you, this is wonderful news!", "I am so angry about the late delivery.", "ok"]


def edge_settings(tmp_path: Path, models_dir: Path = BUNDLES, **overrides: Any) -> EdgeSettings:
    return EdgeSettings(models_dir=models_dir, data_dir=tmp_path / "data", **overrides)


def newest(model: str, repository: Path = BUNDLES) -> str:
    return list_versions(repository, model)[-1]


def copy_repository(dest: Path) -> Path:
    """A writable copy of the shipped bundles (newest version of each model only)."""
    for model in ("emotion", "funnel"):
        version = newest(model)
        shutil.copytree(BUNDLES / model / version, dest / model / version)
    return dest


def add_version(repository: Path, model: str, version: str) -> Path:
    """Install a copy of the newest version under a new version number (a valid bundle)."""
    source = repository / model / list_versions(repository, model)[-1]
    target = repository / model / version
    staging = repository / model / f".{version}.tmp"
    shutil.copytree(source, staging)
    manifest = read_manifest(staging)
    manifest.update(version=version, parent_version=manifest["version"])
    (staging / SIGNATURE).unlink(missing_ok=True)  # it signed the old manifest
    write_manifest(staging, manifest)
    os.replace(staging, target)  # atomic, like models.bundle.install_bundle
    return target


def operator(client: Any) -> dict[str, str]:
    """The headers of the edge operator's requests (the privacy endpoints) to a TestClient's app."""
    return {"Authorization": f"Bearer {client.app.state.operator_token}"}


class StandInRepository:
    """Stands in for the edge's model repository: serves exactly what it is told to,
    after checking that the version is really installed and intact."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.served: dict[str, str] = {}
        self.activations: list[tuple[str, str]] = []

    def activate(self, model: str, version: str) -> None:
        verify_bundle(self.root / model / version)
        self.served[model] = version
        self.activations.append((model, version))

    def status(self) -> NodeStatus:
        return NodeStatus(models=dict(self.served))


def sync_agent(hub_url: str, edge: Path, repo: StandInRepository, token: str | None = None) -> SyncAgent:
    """The edge's sync agent for data dir ``edge``, installing into ``repo``, with a quick backoff."""
    return SyncAgent(
        HubLink.open(hub_url, edge, timeout=5.0),
        repo.root,
        repo.activate,
        repo.status,
        enroll_token=token,
        backoff=Backoff(0.05, 0.2),
    )
