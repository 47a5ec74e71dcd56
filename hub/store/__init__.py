"""Hub storage: one interface (:mod:`hub.store.base`), SQLite and Redis implementations."""

from hub.store.base import NodeRecord, RolloutAction, Store, StoreUnavailable, VersionRecord
from models.errors import NexusError

__all__ = ["NodeRecord", "RolloutAction", "Store", "StoreUnavailable", "VersionRecord", "open_store"]


def open_store(url: str) -> Store:
    """``sqlite:///PATH`` or ``redis://HOST:PORT/DB[?prefix=P]``."""
    # Each backend (and its client library) is imported only when a URL asks for it.
    if url.startswith("sqlite:///"):
        from hub.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://")):
        from hub.store.redis import RedisStore

        return RedisStore.from_url(url)
    raise NexusError(f"unknown store URL {url!r}; expected sqlite:///PATH or redis://HOST:PORT/DB")
