"""Edge settings: paths are absolute, so the SuperNode child (run in the data dir) sees the same folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_worker.settings import EdgeSettings
from models.bundle import DEFAULT_REPOSITORY


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = EdgeSettings.from_env({"NEXUS_DATA_DIR": "edge-1"}, models_dir="models", enroll_token_file="token.txt")
    assert settings.data_dir == tmp_path / "edge-1" and settings.models_dir == tmp_path / "models"
    assert settings.enroll_token_file == tmp_path / "token.txt"
    # what workers rebuild from the environment is the same, wherever they start
    monkeypatch.chdir("/")
    assert EdgeSettings.from_env(settings.to_env()) == settings


def test_a_node_with_a_hub_keeps_its_models_in_its_data_dir(tmp_path: Path) -> None:
    settings = EdgeSettings.from_env({}, data_dir=tmp_path / "edge", hub_url="http://127.0.0.1:8700")
    assert settings.models_dir == tmp_path / "edge" / "models"
    assert EdgeSettings.from_env(settings.to_env()) == settings  # the workers agree
    from_env = EdgeSettings.from_env({"NEXUS_DATA_DIR": str(tmp_path / "e"), "NEXUS_HUB_URL": "http://h"})
    assert from_env.models_dir == tmp_path / "e" / "models"


def test_a_models_dir_given_wins_and_without_a_hub_the_shipped_bundles_are_served(tmp_path: Path) -> None:
    given = EdgeSettings.from_env({"NEXUS_MODELS_DIR": str(tmp_path / "m")}, hub_url="http://h", data_dir=tmp_path)
    assert given.models_dir == tmp_path / "m"
    assert EdgeSettings.from_env({}, data_dir=tmp_path).models_dir == DEFAULT_REPOSITORY
