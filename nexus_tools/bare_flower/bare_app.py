"""A bare Flower app: numpy logistic regression, Flower's FedAvg, stock ``send_and_receive``.

What a Flower user writes from the Message-API templates, with one addition: the grid the
strategy is given notes when each step's messages went out and when their replies came
back (``trace-path``, the format of federated/polling_grid.py), so ``nexus bench rounds``
can lay its rounds beside ours. Each node trains on its own seeded synthetic rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

ROWS = 200
client = ClientApp()
server = ServerApp()


def _data(node_id: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(node_id % 2**32)
    x = rng.standard_normal((ROWS, features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.standard_normal(ROWS) > 0).astype(np.float32)
    return x, y


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-(x @ w))))


@client.train()
def train(msg: Message, context: Context) -> Message:
    w = msg.content.array_records["arrays"]["w"].numpy().copy()
    x, y = _data(context.node_id, len(w))
    for _ in range(5):
        w -= 0.1 * x.T @ (_predict(w, x) - y) / len(y)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    w = msg.content.array_records["arrays"]["w"].numpy()
    x, y = _data(context.node_id, len(w))
    p = np.clip(_predict(w, x), 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": len(y), "loss": loss})}), reply_to=msg)


class TracingGrid(Grid):
    """Flower's grid with a note per message: pushed at the call, seen when the call returns."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.messages: list[dict[str, Any]] = []

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        pushed_at = time.time()
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))  # Flower's 3 s polls
        seen_at = time.time()
        by_request = {r.metadata.reply_to_message_id: r for r in replies}
        for msg in messages:
            meta = msg.metadata  # Flower set the message id when it pushed it
            reply = by_request.get(meta.message_id)
            self.messages.append(
                {
                    "message_type": meta.message_type,
                    "node": meta.dst_node_id,
                    "group": meta.group_id,
                    "pushed_at": pushed_at,
                    "message_id": meta.message_id,
                    "reply_id": "" if reply is None else reply.metadata.message_id,
                    "replied_at": None if reply is None else reply.metadata.created_at,
                    "seen_at": None if reply is None else seen_at,
                    "error": reply is not None and reply.has_error(),
                }
            )
        return replies


@server.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    traced = TracingGrid(grid)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=2, min_available_nodes=2)
    initial = ArrayRecord({"w": Array(np.zeros(int(config["features"]), np.float32))})
    try:
        strategy.start(traced, initial, int(config["num-rounds"]), float(config["timeout"]))
    finally:
        if config["trace-path"]:
            path = Path(str(config["trace-path"]))
            path.write_text(json.dumps({"poll_s": 3.0, "messages": traced.messages}), encoding="utf-8")
