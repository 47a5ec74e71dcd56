"""Edge settings: paths are absolute, so the SuperNode child (run in the data dir) sees the same folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_worker.settings import EdgeSettings


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = EdgeSettings.from_env({"NEXUS_DATA_DIR": "edge-1"}, models_dir="models", enroll_token_file="token.txt")
    assert settings.data_dir == tmp_path / "edge-1" and settings.models_dir == tmp_path / "models"
    assert settings.enroll_token_file == tmp_path / "token.txt"
    # what workers rebuild from the environment is the same, wherever they start
    monkeypatch.chdir("/")
    assert EdgeSettings.from_env(settings.to_env()) == settings
