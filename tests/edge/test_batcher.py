"""The micro-batcher: gathers concurrent requests, answers each its own slice, isolates bad items."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from edge_worker.batcher import BatchResult, MicroBatcher, Overloaded
from edge_worker.metrics import edge_registry
from models.errors import DataError
from tests.support.metrics import sample


class Doubler:
    """A real batch function: doubles numbers, refuses negative ones, records its calls."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()

    def __call__(self, items: list[Any]) -> BatchResult[int]:
        self.threads.add(threading.get_ident())
        self.batches.append(list(items))
        bad = [i for i in items if i < 0]
        if bad:
            raise DataError(f"negative item {bad[0]}")
        return BatchResult([2 * i for i in items], "v1")


def _run(
    enabled: bool, requests: list[list[int]], max_batch: int = 8, max_delay_s: float = 0.01, slots: int = 1
) -> tuple[Doubler, list[Any]]:
    fn = Doubler()
    metrics = edge_registry()

    async def main() -> list[Any]:
        with ThreadPoolExecutor(slots) as pool:
            batcher = MicroBatcher(
                "m", fn, pool, slots, metrics, enabled=enabled, max_batch=max_batch, max_delay_s=max_delay_s
            )
            results = await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
            assert batcher.queue_depth == 0
            return results

    return fn, asyncio.run(main())


def test_concurrent_requests_share_batches_and_get_their_own_slices() -> None:
    requests = [[i, i + 100] for i in range(12)]
    fn, results = _run(True, requests, max_batch=8)
    assert [r.rows for r in results] == [[2 * i, 2 * i + 200] for i in range(12)]
    assert all(r.source == "v1" for r in results)
    assert len(fn.batches) < len(requests)
    assert all(len(b) <= 8 for b in fn.batches)
    assert sorted(x for b in fn.batches for x in b) == sorted(x for r in requests for x in r)
    assert threading.get_ident() not in fn.threads  # never on the event loop's thread


def test_a_request_larger_than_max_batch_runs_alone() -> None:
    fn, results = _run(True, [list(range(20)), [1]], max_batch=8)
    assert results[0].rows == [2 * i for i in range(20)] and results[1].rows == [2]
    assert [len(b) for b in fn.batches if len(b) > 8] == [20]


def test_switched_off_each_request_runs_alone_in_the_pool() -> None:
    requests = [[i] for i in range(6)]
    fn, results = _run(False, requests)
    assert [r.rows for r in results] == [[2 * i] for i in range(6)]
    assert sorted(fn.batches) == requests
    assert threading.get_ident() not in fn.threads


def test_a_bad_item_fails_only_its_own_request() -> None:
    requests = [[1], [-5, 2], [3], [4, 5]]
    _, results = _run(True, requests)
    assert results[0].rows == [2] and results[2].rows == [6] and results[3].rows == [8, 10]
    assert isinstance(results[1], DataError) and "negative item -5" in str(results[1])


@pytest.mark.parametrize("slots", [1, 2])
def test_a_lone_request_is_answered_after_the_delay(slots: int) -> None:
    fn, results = _run(True, [[7]], max_delay_s=0.005, slots=slots)
    assert results[0].rows == [14] and fn.batches == [[7]]


def test_batch_sizes_and_items_reach_metrics() -> None:
    fn = Doubler()
    metrics = edge_registry()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("m", fn, pool, 1, metrics, max_batch=4, max_delay_s=0.01)
            await asyncio.gather(*(batcher.submit([i]) for i in range(8)))

    asyncio.run(main())
    text = metrics.render()
    assert sample(text, "nexus_edge_inference_items_total", model="m") == 8
    assert sample(text, "nexus_edge_batch_size_count", model="m") == len(fn.batches)
    assert sample(text, "nexus_edge_batch_size_sum", model="m") == 8


@pytest.mark.parametrize("enabled", [True, False])
def test_requests_beyond_the_in_flight_cap_are_refused_not_queued(enabled: bool) -> None:
    metrics = edge_registry()

    async def main() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher("m", Doubler(), pool, 1, metrics, enabled=enabled, max_queued=3)
            results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)), return_exceptions=True)
            assert batcher.in_flight == 0
            after = await batcher.submit([7])  # the cap frees as requests finish
            return [*results, after]

    results = asyncio.run(main())
    answered = [r for r in results if isinstance(r, BatchResult)]
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(answered) == 4 and len(refused) == 7
    assert answered[-1].rows == [14]
    assert sample(metrics.render(), "nexus_edge_rejected_total", model="m") == 7
