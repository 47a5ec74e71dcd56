"""The ServerApp's own push/pull loop: replies seen within :data:`POLL_S`, not at Flower's 3 s polls.

Flower's ``Grid.send_and_receive`` pushes the messages and then pulls the replies with a
fixed 3 s sleep between pulls (flwr/superlink/grid/http_grid.py), so each train or evaluate
step waits up to 3 s after its last reply arrived. :class:`PollingGrid` wraps the grid the
ServerApp is handed and does the same with Flower's public ``push_messages`` /
``pull_messages`` at a short interval; everything else goes to the wrapped grid.

It keeps a :class:`MessageTrace` of every message (type, node, when it was pushed, when
the node's reply was created and when it was seen), which the ServerApp writes beside the
run summary (``<output>.trace.json``): where a round's seconds went, from the hub's side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from federated.delegating_grid import DelegatingGrid

#: seconds between two pulls while replies are outstanding (a pull of nothing is one small request)
POLL_S = 0.05


@dataclass
class TracedMessage:
    message_type: str
    node: int
    group: str
    pushed_at: float
    #: Flower's ids of the message and of its reply (a SuperNode's log names them)
    message_id: str = ""
    reply_id: str = ""
    #: the reply's ``created_at`` (the node's clock: when its ClientApp finished)
    replied_at: float | None = None
    seen_at: float | None = None
    error: bool = False


@dataclass
class MessageTrace:
    messages: list[TracedMessage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"poll_s": POLL_S, "messages": [asdict(m) for m in self.messages]}

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        tmp.replace(path)


def trace_path(output_path: str) -> Path:
    """Where a run's message trace goes: beside its summary (``final.npz`` -> ``final.trace.json``)."""
    return Path(output_path).with_suffix(".trace.json")


class PollingGrid(DelegatingGrid):
    def __init__(self, inner: Grid, poll_s: float = POLL_S, trace: MessageTrace | None = None) -> None:
        super().__init__(inner)
        self.poll_s = poll_s
        self.trace = trace if trace is not None else MessageTrace()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's contract: push, then pull until every reply is in or ``timeout`` passed."""
        messages = list(messages)
        pushed_at = time.time()
        ids = list(self.inner.push_messages(messages))
        traced: dict[str, TracedMessage] = {}
        for msg, message_id in zip(messages, ids):
            if message_id:  # Flower gives None for a message it could not push
                meta = msg.metadata
                traced[message_id] = TracedMessage(
                    meta.message_type, meta.dst_node_id, meta.group_id, pushed_at, message_id
                )
        self.trace.messages.extend(traced.values())
        waiting = set(traced)
        end = None if timeout is None else time.time() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.inner.pull_messages(list(waiting)))
            now = time.time()
            for reply in got:
                entry = traced.get(reply.metadata.reply_to_message_id)
                if entry is not None:
                    entry.seen_at, entry.replied_at, entry.error = now, reply.metadata.created_at, reply.has_error()
                    entry.reply_id = reply.metadata.message_id
                waiting.discard(reply.metadata.reply_to_message_id)
            replies.extend(got)
            if not waiting or (end is not None and now >= end):
                break
            time.sleep(self.poll_s if end is None else max(0.0, min(self.poll_s, end - now)))
        return replies
