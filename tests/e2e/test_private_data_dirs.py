"""Raw user data, keys and logs are the owner's alone: data dirs 0700 and every file in them
0600, on a real hub and a real edge started under a permissive umask (022, the usual one)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hub.client import OperatorClient
from models.bundle import DEFAULT_REPOSITORY
from tests.support.processes import EdgeProcess, HubProcess, wait_for
from tests.support.processes import free_port as port


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the children inherit it
    try:
        yield
    finally:
        os.umask(previous)


def _too_open(root: Path) -> list[str]:
    wrong = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode & 0o077:
            wrong.append(f"{path.relative_to(root.parent)} is {mode:o}, wants {want:o}")
    return wrong


class EmotionEdge(EdgeProcess):
    models = "emotion"
    extra_args = ("--no-supernode",)


def test_hub_and_edge_keep_their_data_dirs_private(tmp_path: Path, permissive_umask: None) -> None:
    # a data dir that already exists with the umask's 0755 is narrowed, not only new ones
    (tmp_path / "edge" / "data").mkdir(parents=True)
    hub = HubProcess(tmp_path / "hub", port())
    edge = None
    try:
        with OperatorClient(hub.url, (tmp_path / "hub" / "admin.token").read_text().strip()) as admin:
            admin.promote("emotion", admin.push(DEFAULT_REPOSITORY / "emotion" / "1")["version"], "stable")
            enroll = admin.create_token({})["token"]
        edge = EmotionEdge(tmp_path / "edge", hub.url, enroll)
        wait_for(lambda: edge.served() is not None, timeout=60, what="the edge serving the hub's bundle")
        stored = httpx.post(
            edge.url + "/v1/feedback", json={"text": "love it", "labels": ["joy"], "visitor_id": "v-1"}, timeout=10
        )
        assert stored.status_code < 300, stored.text
        assert (tmp_path / "edge" / "data" / "edge.sqlite3").exists()
        assert _too_open(tmp_path / "edge" / "data") == []
        assert _too_open(tmp_path / "hub") == []
    finally:
        if edge is not None:
            edge.stop()
        hub.stop()
