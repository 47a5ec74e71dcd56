"""What a node's reply to the SuperLink carries, as bytes both ends hash alike.

The node's audit mod hashes these bytes into its log entry, and the hub's ServerApp hashes
the same bytes of the reply it received to sign a receipt; the two agree only if both
build them here. They are the arrays' serialized data (``Array.data``, what Flower puts in
its protobuf) in record and name order, then the bytes values of the config records (in record
and key order; the JSON names each by its length and sha256), then the canonical JSON of the
metric and config records; an error reply is its reason text. Flower's own framing (message metadata,
protobuf and HTTP headers) is not part of them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from nexus_wire.heads import canonical_json


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _blobs(value: Any) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    return [v for v in value if isinstance(v, bytes)] if isinstance(value, list) else []


def describe(content: RecordDict) -> tuple[bytes, dict[str, Any]]:
    """The bytes a reply's content is hashed as, and its summary (shapes, dtypes, values)."""
    parts, arrays = [], {}
    for record_name, record in sorted(content.array_records.items()):
        for name, array in sorted(record.items()):
            arrays[f"{record_name}/{name}"] = {
                "shape": list(array.shape),
                "dtype": array.dtype,
                "bytes": len(array.data),
                "sha256": hashlib.sha256(array.data).hexdigest(),
            }
            parts.append(array.data)
    named: list[tuple[str, MetricRecord | ConfigRecord]] = [
        *content.metric_records.items(),
        *content.config_records.items(),
    ]
    records = {name: {k: _plain(v) for k, v in record.items()} for name, record in sorted(named)}
    # bytes values (SecAgg+ keys, encrypted shares, masked vectors) count as sent, like arrays
    parts += [blob for _, record in sorted(named) for _, v in sorted(record.items()) for blob in _blobs(v)]
    parts.append(canonical_json(records).encode("utf-8"))
    return b"".join(parts), {"arrays": arrays, "records": records}


def reply_body(reply: Message) -> bytes:
    """The bytes of a reply both ends hash: its content, or an error's reason."""
    if reply.has_error():
        return (reply.error.reason or "").encode("utf-8")
    return describe(reply.content)[0]
