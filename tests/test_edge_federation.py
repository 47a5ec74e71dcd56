"""``--superlink auto``: the edge joins the SuperLink its hub names (edge_worker/federation.py).
The whole path (hub heartbeat reply -> sync agent -> SuperNode) runs in ``nexus demo``'s test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_worker.federation import AUTO, LEARNED_FILE, _target, learned_superlink, remember_superlink
from hub.settings import HubSettings


def test_the_sync_agent_keeps_only_a_well_formed_address(tmp_path: Path) -> None:
    assert learned_superlink(tmp_path) is None
    for bad in (None, 9092, "", "no-port", "host:port", "a b:9092", "x" * 300 + ":1", "127.0.0.1:9092; rm -rf /"):
        assert remember_superlink(tmp_path, bad) is False
    assert not (tmp_path / LEARNED_FILE).exists()
    assert remember_superlink(tmp_path, "127.0.0.1:9092") is True
    assert remember_superlink(tmp_path, "127.0.0.1:9092") is False  # unchanged: not rewritten
    assert learned_superlink(tmp_path) == "127.0.0.1:9092"
    assert remember_superlink(tmp_path, "[::1]:9100") is True and learned_superlink(tmp_path) == "[::1]:9100"


def test_auto_joins_only_a_loopback_superlink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert _target("10.0.0.5:9092", tmp_path) == "10.0.0.5:9092"  # given explicitly: the operator's choice
    assert _target(AUTO, tmp_path) is None  # the hub has not named one yet
    remember_superlink(tmp_path, "localhost:9092")
    assert _target(AUTO, tmp_path) == "localhost:9092"
    remember_superlink(tmp_path, "superlink.example:9092")
    with caplog.at_level(logging.ERROR, logger="nexus.edge.supernode"):
        assert _target(AUTO, tmp_path) is None
    assert "not on loopback" in caplog.text


def test_the_hub_names_the_superlink_edges_should_join(tmp_path: Path) -> None:
    assert HubSettings(data_dir=tmp_path).superlink_address() is None
    assert HubSettings(data_dir=tmp_path, superlink_port=9092).superlink_address() == "127.0.0.1:9092"
    assert (
        HubSettings(data_dir=tmp_path, superlink="sl:9092", superlink_public="sl.example:443").superlink_address()
        == "sl.example:443"
    )
