"""Signed receipts for what nodes send through Flower: the hub side of the audit trail.

A node's HTTP requests get the hub's receipt in a response header (nexus_wire/heads.py);
a Flower reply has no response, so the ServerApp (run by the hub's SuperLink, with the hub's
signing key named by ``NEXUS_RECEIPT_KEY``) signs one per reply it received, train and
evaluate alike and error replies too, in the ``nexus-flower-receipt/2`` format: the node
the reply came from (Flower's node id, as the SuperLink authenticated it), the message type,
``message`` (the id of the instruction the reply answers), the sha256 and length of the
reply's bytes (:func:`federated.digest.reply_body`) and the time. The node's audit entry
records each of them, and its log refuses a receipt that differs in any.

Receipts go back with the next message to the same node (a ``nexus-receipts`` config
record beside the round's arrays); those still held when the rounds end go out in one
``query.receipts`` message per node. The node's audit mod attaches each to its entry.
Without the variable (``nexus federated simulate``) no receipts are made.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from federated.digest import reply_body
from nexus_service.keyfiles import load_signing_key
from nexus_wire.heads import KEY_ENV, canonical_json, flower_binding, sign_receipt, utc_now
from nexus_wire.messages import RECEIPTS_FIELD, RECEIPTS_MESSAGE, RECEIPTS_RECORD

#: the final delivery waits at most this long for nodes that went away meanwhile
FLUSH_TIMEOUT_S = 30.0


class ReceiptBook:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self._pending: dict[int, list[str]] = defaultdict(list)
        self.issued = 0
        self.delivered = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ReceiptBook | None:
        path = environ.get(KEY_ENV)
        return cls(load_signing_key(Path(path))) if path else None

    def take(self, replies: Iterable[Message]) -> None:
        """Sign a receipt for every reply, before anything decodes or rewrites it."""
        for reply in replies:
            if not reply.metadata.reply_to_message_id:
                continue  # made by the ServerApp itself (federated/secure_grid.py): no node sent it
            body, meta = reply_body(reply), reply.metadata
            binding = flower_binding(
                meta.src_node_id,
                meta.message_type,
                meta.reply_to_message_id,
                hashlib.sha256(body).hexdigest(),
                len(body),
            )
            receipt = sign_receipt(self.key, binding, utc_now())
            self._pending[reply.metadata.src_node_id].append(canonical_json(receipt))
            self.issued += 1

    def attach(self, messages: Iterable[Message]) -> list[Message]:
        """Give each message the receipts its node is owed. Strategies share one content
        object between a round's messages, so each gets its own copy."""
        out = []
        for msg in messages:
            owed = self._pending.pop(msg.metadata.dst_node_id, None)
            if owed:
                msg.content = RecordDict({**msg.content, RECEIPTS_RECORD: _record(owed)})
                self.delivered += len(owed)
            out.append(msg)
        return out

    def flush(self, grid: Grid, timeout: float = FLUSH_TIMEOUT_S) -> int:
        """Send what is still owed, one message per node; the number of nodes that acknowledged."""
        messages = [
            Message(RecordDict({RECEIPTS_RECORD: _record(owed)}), dst_node_id=node, message_type=RECEIPTS_MESSAGE)
            for node, owed in self._pending.items()
            if owed
        ]
        if not messages:
            return 0
        owed_count = sum(len(v) for v in self._pending.values())
        self._pending.clear()
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        acked = sum(1 for r in replies if not r.has_error())
        self.delivered += owed_count
        level = INFO if acked == len(messages) else WARNING
        log(
            level,
            "receipts: %d issued, the last %d sent to %d nodes, %d acknowledged",
            self.issued,
            owed_count,
            len(messages),
            acked,
        )
        return acked


def _record(owed: list[str]) -> ConfigRecord:
    return ConfigRecord({RECEIPTS_FIELD: owed})


def receipts_in(msg: Message) -> list[dict[str, Any]]:
    """The receipts a message from the ServerApp carries (node side); malformed ones are skipped."""
    if RECEIPTS_RECORD not in msg.content.config_records:
        return []
    found = []
    texts = msg.content.config_records[RECEIPTS_RECORD].get(RECEIPTS_FIELD, [])
    for text in texts if isinstance(texts, list) else []:
        try:
            receipt = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            receipt = None
        if isinstance(receipt, dict):
            found.append(receipt)
    return found
