"""Hub storage: one interface (:mod:`hub.store.base`), SQLite and Redis implementations."""

from hub.store.base import NodeRecord, RolloutAction, Store, StoreUnavailable, VersionRecord, open_store

__all__ = ["NodeRecord", "RolloutAction", "Store", "StoreUnavailable", "VersionRecord", "open_store"]
