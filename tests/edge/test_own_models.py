"""A node with a hub gets a model repository of its own, seeded with the shipped bundles; the
package's bundles are never a place the sync agent installs into."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from edge_worker import own_models
from edge_worker.settings import EdgeSettings
from models.bundle import DEFAULT_REPOSITORY, BundleError, install_bundle, list_versions
from tests.support.edge import StandInRepository, sync_agent
from tests.support.hub import RunningHub


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_the_data_dir_repository_is_seeded_once_with_private_copies(tmp_path: Path) -> None:
    settings = EdgeSettings.from_env({}, data_dir=tmp_path / "edge", hub_url="http://127.0.0.1:1")
    (tmp_path / "edge").mkdir()
    assert own_models.prepare(settings)
    own = settings.models_dir
    assert _files(own) == _files(DEFAULT_REPOSITORY) and list_versions(own, "funnel") == ["1"]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [own, *own.rglob("*")]}
    assert modes <= {0o700, 0o600}
    assert not own_models.prepare(settings)  # a second start keeps what the hub installed
    assert [p.name for p in (tmp_path / "edge").iterdir()] == ["models"]  # no temp folder left


def test_without_a_hub_or_with_a_models_dir_given_nothing_is_copied(tmp_path: Path) -> None:
    assert not own_models.prepare(EdgeSettings.from_env({}, data_dir=tmp_path))
    given = EdgeSettings.from_env({}, data_dir=tmp_path, models_dir=tmp_path / "m", hub_url="http://h")
    assert not own_models.prepare(given)
    assert list(tmp_path.iterdir()) == []


def test_installing_into_the_shipped_bundles_is_refused(tmp_path: Path) -> None:
    before = _files(DEFAULT_REPOSITORY)
    with pytest.raises(BundleError, match="shipped bundles"):
        install_bundle(DEFAULT_REPOSITORY / "funnel" / "1", DEFAULT_REPOSITORY)
    assert _files(DEFAULT_REPOSITORY) == before


def test_the_sync_agent_refuses_to_write_into_the_package(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.promote("funnel", hub.admin.push(DEFAULT_REPOSITORY / "funnel" / "1")["version"], "stable")
    before = _snapshot(DEFAULT_REPOSITORY)
    repo = StandInRepository(DEFAULT_REPOSITORY)  # a node started with --models at the package's bundles
    agent = sync_agent(hub.url, tmp_path / "edge", repo, hub.admin.create_token({})["token"])

    async def once() -> dict[str, str]:
        try:
            return await agent.sync_once()
        finally:
            await agent.link.aclose()

    assert asyncio.run(once()) == {}
    assert "shipped bundles" in agent.state.refused["funnel"]["reason"] and repo.served == {}
    assert _snapshot(DEFAULT_REPOSITORY) == before  # not even the hub's signature of version 1
