"""Everything one edge app owns, held on ``app.state.edge`` (no module globals).

This is also the seam for background agents. The sync agent gets the state, installs
bundles into ``settings.models_dir``, then either ``repository.activate(model, version)``
(blocking: serve exactly that version) or ``await state.reload(model)`` (newest);
``served_versions()`` and ``queue_depth()`` feed its heartbeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edge_worker.batcher import MicroBatcher
from edge_worker.metrics import Registry
from edge_worker.repository import ModelNotReady, ModelRepository, Served
from edge_worker.schemas import Schemas
from edge_worker.settings import EdgeSettings
from edge_worker.store import LocalStore

T = TypeVar("T")


@dataclass
class EdgeState:
    settings: EdgeSettings
    metrics: Registry
    repository: ModelRepository
    schemas: Schemas
    batchers: dict[str, MicroBatcher]
    inference_pool: ThreadPoolExecutor
    #: SQLite calls run on one thread of their own, off the event loop
    store_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="nexus-store")
    )
    store: LocalStore | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def reload(self, model: str | None = None, *, retry_failed: bool = False) -> dict[str, str | None]:
        """Rescan the model repository and hot-swap newer (or pinned) versions in."""
        return await asyncio.to_thread(self.repository.reload, model, retry_failed=retry_failed)

    async def in_store(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.store_pool, fn, *args)

    def served_versions(self) -> dict[str, str]:
        return {m: served.version for m in self.repository.models if (served := self.repository.get(m)) is not None}

    def queue_depth(self) -> int:
        return sum(batcher.queue_depth for batcher in self.batchers.values())

    def served(self, model: str) -> Served:
        served = self.repository.get(model)
        if served is None:
            raise ModelNotReady(model)
        return served
