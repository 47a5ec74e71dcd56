"""An in-process Grid: the ServerApp's rounds delivered straight to a ClientApp per node.

The simulation runs the very ServerApp logic and ClientApp handlers the SuperLink and
SuperNodes run, minus the network: each message is handed to the ClientApp with the
destination node's Context, and the reply is returned at once. An exception in a handler
becomes an error reply, as a SuperNode would send.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from federated.failures import reason_of


class LocalGrid(Grid):
    def __init__(self, app: ClientApp, node_configs: Mapping[int, Mapping[str, Any]], run_id: int = 1) -> None:
        self.app = app
        self.contexts = {node: Context(run_id, node, dict(cfg), RecordDict(), {}) for node, cfg in node_configs.items()}
        self._run: Run | None = None
        self._replies: dict[str, Message] = {}
        # new Messages read their sender from the process's task identity, as in a ServerApp process
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        if self._run is None:
            raise RuntimeError("no run set")
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            message_id = uuid.uuid4().hex
            # the SuperLink assigns message ids; Metadata offers no public setter for it
            msg.metadata.__dict__["_message_id"] = message_id
            context = self.contexts[msg.metadata.dst_node_id]
            # each node gets its own config records, as over the network: strategies and Flower's
            # workflows send one content object to every node, and Flower's SecAgg+ mod edits its own
            msg.content = RecordDict(
                {**msg.content, **{k: ConfigRecord(dict(v)) for k, v in msg.content.config_records.items()}}
            )
            try:
                reply = self.app(msg, context)
            except Exception as exc:
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason_of(exc)), reply_to=msg)
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
