"""What revocation keeps in the store, on both stores: revoked nodes, ended dashboard
sessions, and the compare-and-set of the admin token's hash (hub/admin_rotation.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hub.store.base import NodeRecord, Store
from hub.store.sqlite import SqliteStore


def test_revoke_keeps_the_first_time_and_only_for_known_nodes(any_store: Store) -> None:
    any_store.add_node(NodeRecord("n-1", "h", {"region": "3"}, 10.0))
    assert any_store.get_node("n-1").revoked_at is None  # type: ignore[union-attr]
    revoked = any_store.revoke_node("n-1", 20.0)
    assert revoked is not None and revoked.revoked_at == 20.0 and revoked.tags == {"region": "3"}
    assert any_store.revoke_node("n-1", 30.0).revoked_at == 20.0  # type: ignore[union-attr]
    assert [n.revoked_at for n in any_store.list_nodes()] == [20.0]
    any_store.record_heartbeat("n-1", 40.0, {"health": "ok"})  # a heartbeat does not un-revoke
    assert any_store.get_node("n-1").revoked_at == 20.0  # type: ignore[union-attr]
    assert any_store.revoke_node("n-unknown", 20.0) is None
    assert any_store.get_node("n-unknown") is None  # nothing created


def test_swap_meta_is_compare_and_set(any_store: Store) -> None:
    assert any_store.get_meta("admin_token_sha256") is None
    assert not any_store.swap_meta("admin_token_sha256", "a", "b")  # unset: nothing to swap
    any_store.claim_meta("admin_token_sha256", "a")
    assert not any_store.swap_meta("admin_token_sha256", "x", "b")
    assert any_store.get_meta("admin_token_sha256") == "a"
    assert any_store.swap_meta("admin_token_sha256", "a", "b")
    assert any_store.get_meta("admin_token_sha256") == "b"
    assert not any_store.swap_meta("admin_token_sha256", "a", "c")  # the loser of a race


def test_ended_sessions(any_store: Store) -> None:
    assert not any_store.session_ended("100.abc")
    any_store.end_session("100.abc", expires_at=1e12, now=100.0)
    assert any_store.session_ended("100.abc") and not any_store.session_ended("100.abd")


def test_sqlite_store_of_an_older_hub_gains_the_revocation_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE nodes (node_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, tags TEXT NOT NULL,"
        " enrolled_at REAL NOT NULL, last_seen REAL, heartbeat TEXT)"
    )
    db.execute("INSERT INTO nodes VALUES ('n-old', 'h', '{}', 1.0, NULL, NULL)")
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        assert store.get_node("n-old") == NodeRecord("n-old", "h", {}, 1.0)
        assert store.revoke_node("n-old", 2.0).revoked_at == 2.0  # type: ignore[union-attr]
    finally:
        store.close()
