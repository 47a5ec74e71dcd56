"""Per-model micro-batcher: concurrent requests share one inference call.

A request submits its items (one or more texts or sessions). Items wait until the
pending batch holds ``max_batch`` items or the oldest has waited ``max_delay``; the batch
then runs in the inference thread pool and each request gets its own slice back. While
every inference thread is busy, requests keep gathering, so batches grow with load.
Switched off, each request runs alone in the pool (never on the event loop).

Admission is bounded: beyond ``max_queued`` requests waiting for or in inference, a request
is refused at once (:class:`Overloaded`, answered 429 with ``Retry-After``) rather than
queued: an unbounded queue only turns overload into latency for everyone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from edge_worker.metrics import Registry
from models.errors import NexusError

R = TypeVar("R")


@dataclass
class BatchResult(Generic[R]):
    """What a batch function returns: one row per item, plus what produced them (the model version)."""

    rows: Sequence[R]
    source: Any


#: runs a flat list of items; must return one row per item
BatchFn = Callable[[list[Any]], BatchResult[Any]]


class Overloaded(NexusError):
    def __init__(self, model: str, limit: int) -> None:
        super().__init__(f"model {model!r} has {limit} requests in flight, its limit; retry later")
        self.model = model


@dataclass
class _Entry:
    items: list[Any]
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        model: str,
        run: BatchFn,
        executor: Executor,
        slots: int,
        metrics: Registry,
        *,
        enabled: bool = True,
        max_batch: int = 32,
        max_delay_s: float = 0.002,
        max_queued: int | None = None,
    ) -> None:
        self.model = model
        self._run = run
        self._executor = executor
        self._metrics = metrics
        self._labels = (("model", model),)
        self.enabled = enabled
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queued = max_queued
        self._in_flight = 0
        self._pending: deque[_Entry] = deque()
        self._pending_items = 0
        self._free_slots = slots
        self._timer: asyncio.TimerHandle | None = None
        self._deadline_passed = False
        # The loop holds tasks weakly; running batches are kept here until done.
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queue_depth(self) -> int:
        return self._pending_items

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def submit(self, items: list[Any]) -> BatchResult[Any]:
        """The rows for ``items``; :class:`Overloaded` when ``max_queued`` requests are already in flight."""
        if self.max_queued is not None and self._in_flight >= self.max_queued:
            self._metrics.inc("nexus_edge_rejected_total", self._labels)
            raise Overloaded(self.model, self.max_queued)
        self._in_flight += 1
        try:
            return await self._submit(items)
        finally:
            self._in_flight -= 1

    async def _submit(self, items: list[Any]) -> BatchResult[Any]:
        if not self.enabled:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._timed_run, items)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(items, future))
        self._pending_items += len(items)
        if self._pending_items >= self.max_batch or self.max_delay_s == 0:
            self._deadline_passed = True
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay_s, self._on_deadline)
        return await future

    def _on_deadline(self) -> None:
        self._timer = None
        self._deadline_passed = True
        self._dispatch()

    def _dispatch(self) -> None:
        # Start batches while a thread is free and the queue holds a full batch or has
        # waited long enough; otherwise leave it to gather.
        while (
            self._pending and self._free_slots > 0 and (self._deadline_passed or self._pending_items >= self.max_batch)
        ):
            batch = self._take_batch()
            self._free_slots -= 1
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if not self._pending:
            self._deadline_passed = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _take_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        count = 0
        # A request is never split; one larger than max_batch runs as its own batch.
        while self._pending and (not batch or count + len(self._pending[0].items) <= self.max_batch):
            entry = self._pending.popleft()
            batch.append(entry)
            count += len(entry.items)
        self._pending_items -= count
        return batch

    async def _execute(self, batch: list[_Entry]) -> None:
        items = [item for entry in batch for item in entry.items]
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._timed_run, items)
        except Exception as exc:  # one bad batch must answer every waiting request
            await self._isolate(batch, exc)
        else:
            start = 0
            for entry in batch:
                end = start + len(entry.items)
                if not entry.future.done():
                    entry.future.set_result(BatchResult(result.rows[start:end], result.source))
                start = end
        finally:
            self._free_slots += 1
            # Whatever queued meanwhile has waited at least one batch time: send it now.
            if self._pending:
                self._deadline_passed = True
            self._dispatch()

    async def _isolate(self, batch: list[_Entry], exc: Exception) -> None:
        """Re-run a failed multi-request batch request by request, so a bad item only fails its own caller."""
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        loop = asyncio.get_running_loop()
        for entry in batch:
            try:
                result = await loop.run_in_executor(self._executor, self._timed_run, entry.items)
            except Exception as single_exc:
                if not entry.future.done():
                    entry.future.set_exception(single_exc)
            else:
                if not entry.future.done():
                    entry.future.set_result(result)

    def _timed_run(self, items: list[Any]) -> BatchResult[Any]:
        start = time.perf_counter()
        result = self._run(items)
        self._metrics.observe("nexus_edge_inference_duration_seconds", self._labels, time.perf_counter() - start)
        self._metrics.observe("nexus_edge_batch_size", self._labels, len(items))
        self._metrics.inc("nexus_edge_inference_items_total", self._labels, len(items))
        return result
