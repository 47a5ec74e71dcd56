"""Hub settings: paths are absolute, so the SuperLink and ServerApps (other working dirs) see the same folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.settings import HubSettings


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = HubSettings(data_dir=Path("hub-data"), rounds_dir=Path("runs"), eval_data={"funnel": Path("held.csv")})
    assert settings.data_dir == tmp_path / "hub-data" and settings.rounds_path() == tmp_path / "runs"
    assert settings.eval_data == {"funnel": tmp_path / "held.csv"}
    assert settings.store_url() == f"sqlite:///{tmp_path / 'hub-data' / 'hub.sqlite3'}"
