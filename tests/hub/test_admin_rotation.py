"""A rotate-admin a crash interrupted is finished, or dropped, at the next start (the store decides)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.admin_rotation import finish_rotation, rotate_admin
from hub.auth import ADMIN_HASH_META, Authenticator, check_store_admin, hash_secret
from hub.store.sqlite import SqliteStore
from nexus_service.http import ApiError
from nexus_wire.datadir import HubDataDir


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "hub.sqlite3")
    store.claim_meta(ADMIN_HASH_META, hash_secret("old"))
    HubDataDir(tmp_path).admin_token.write_text("old")
    return store


def test_a_rotation_that_reached_the_store_is_finished(tmp_path: Path, store: SqliteStore) -> None:
    paths = HubDataDir(tmp_path)
    paths.admin_token_next.write_text("new")
    store.swap_meta(ADMIN_HASH_META, hash_secret("old"), hash_secret("new"))  # crashed before the rename
    finish_rotation(store, tmp_path)
    assert paths.admin_token.read_text() == "new" and not paths.admin_token_next.exists()
    check_store_admin(store, "new")


def test_a_rotation_that_did_not_reach_the_store_is_dropped(tmp_path: Path, store: SqliteStore) -> None:
    paths = HubDataDir(tmp_path)
    paths.admin_token_next.write_text("new")  # crashed before the compare-and-set
    finish_rotation(store, tmp_path)
    assert paths.admin_token.read_text() == "old" and not paths.admin_token_next.exists()
    check_store_admin(store, "old")


def test_a_rotation_loses_to_another_replicas(tmp_path: Path, store: SqliteStore) -> None:
    auth = Authenticator(store, "old")
    store.swap_meta(ADMIN_HASH_META, hash_secret("old"), hash_secret("other"))
    with pytest.raises(ApiError) as refused:
        rotate_admin(store, tmp_path, auth)
    assert refused.value.status == 409 and auth.admin_token == "old"
    assert HubDataDir(tmp_path).admin_token.read_text() == "old" and not HubDataDir(tmp_path).admin_token_next.exists()
