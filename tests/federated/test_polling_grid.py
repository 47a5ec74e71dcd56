"""The ServerApp's own push/pull loop (federated/polling_grid.py) over a grid whose replies come late."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated.local_grid import LocalGrid
from federated.polling_grid import PollingGrid, trace_path


class LateGrid(LocalGrid):
    """The in-process grid, but each reply shows up only after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(ClientApp(), {1: {}, 2: {}})  # the app is never called: replies are made here
        self.delay = delay
        self.pulls = 0
        self.ready_at: dict[str, float] = {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            message_id = f"m{len(self.ready_at)}"
            msg.metadata.__dict__["_message_id"] = message_id
            reply = Message(RecordDict({"metrics": MetricRecord({"x": 1})}), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = "reply-" + message_id  # as the SuperLink names it
            self._replies[message_id] = reply
            self.ready_at[message_id] = time.time() + self.delay
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        now = time.time()
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies and self.ready_at[i] <= now]


def _queries(grid: PollingGrid) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type="query") for node in grid.get_node_ids()]


def test_replies_are_seen_within_the_poll_interval_and_traced(tmp_path: Path) -> None:
    inner = LateGrid(delay=0.3)
    grid = PollingGrid(inner, poll_s=0.02)
    started = time.time()
    replies = list(grid.send_and_receive(_queries(grid), timeout=10))
    took = time.time() - started
    assert len(replies) == 2 and 0.3 <= took < 1.0  # Flower's own loop would have slept 3 s
    assert inner.pulls > 5
    traced = grid.trace.messages
    assert [m.node for m in traced] == [1, 2] and all(m.message_type == "query" for m in traced)
    assert all(m.seen_at is not None and m.seen_at - m.pushed_at >= 0.3 and m.reply_id for m in traced)
    out = trace_path(str(tmp_path / "final.npz"))
    grid.trace.write(out)
    assert out.name == "final.trace.json" and '"messages"' in out.read_text()


def test_a_timeout_returns_the_replies_in_so_far() -> None:
    grid = PollingGrid(LateGrid(delay=5.0), poll_s=0.02)
    started = time.time()
    assert list(grid.send_and_receive(_queries(grid), timeout=0.2)) == []
    assert time.time() - started < 1.0
    assert all(m.seen_at is None for m in grid.trace.messages)
