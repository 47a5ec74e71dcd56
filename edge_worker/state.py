"""Everything one edge app owns, held on ``app.state.edge`` (no module globals).

This is also the seam for background agents. The sync agent gets the state (and the
node's ``hub`` link), installs
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
from edge_worker.hub_link import HubLink
from edge_worker.metrics import Registry
from edge_worker.repository import ModelNotReady, ModelRepository, Served
from edge_worker.settings import EdgeSettings
from edge_worker.store import LocalStore
from models.families import Families

T = TypeVar("T")


@dataclass
class EdgeState:
    settings: EdgeSettings
    metrics: Registry
    repository: ModelRepository
    #: the registry the served models' families come from
    families: Families
    #: per served model: its family's request limits under this node's settings
    limits: dict[str, dict[str, int]]
    batchers: dict[str, MicroBatcher]
    inference_pool: ThreadPoolExecutor
    #: SQLite calls run on one thread of their own, off the event loop
    store_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="nexus-store")
    )
    store: LocalStore | None = None
    #: the node's link to the hub, while the app runs with a hub (edge_worker/hub_link.py)
    hub: HubLink | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    #: the port the OIP v2 gRPC server bound, while it runs (edge_worker/oip_grpc.py)
    grpc_port: int | None = None

    @property
    def local_store(self) -> LocalStore:
        """The local store, which the lifespan opens before the app takes a request."""
        if self.store is None:
            raise RuntimeError("the local store is not open: the app's lifespan has not run")
        return self.store

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
