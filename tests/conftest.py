"""Fixtures for tests of more than one package: a running hub.

Helpers that tests call directly live in tests/support/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.store.base import Store
from tests.support.hub import RunningHub, cleanup, store_for


@pytest.fixture
def hub_store(tmp_path: Path) -> Iterator[Store]:
    """The store under ``hub``: SQLite here; tests/hub/ runs its hubs on every store."""
    store = store_for("sqlite", tmp_path, None)
    yield store
    cleanup(store)


@pytest.fixture
def hub(hub_store: Store, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningHub]:
    """A hub on 127.0.0.1 with its data dir in ``tmp_path / "hub"``; a test or module marked
    ``hub_settings(**settings)`` gets those HubSettings."""
    marker = request.node.get_closest_marker("hub_settings")
    running = RunningHub(tmp_path / "hub", hub_store, **(marker.kwargs if marker else {}))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tiny_accurate(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One tiny accurate-tier bundle for the session (tests/support/accurate.py; needs the 'train' extra)."""
    from tests.support.accurate import build

    return build(tmp_path_factory.mktemp("tiny-accurate"))
