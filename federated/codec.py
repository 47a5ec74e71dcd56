"""Model updates on the wire: dense arrays, or touched embedding rows as compressed deltas.

An emotion node changes only the embedding rows its texts hit, so it ships those rows'
deltas from the round's global model (int8 with one float32 scale per row, or fp16)
plus the small dense layer in fp32. The server rebuilds full arrays against the global
model it sent; :func:`decode` rejects anything malformed with :class:`UpdateError`.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

Weights = dict[str, np.ndarray]
SPARSE_KEY = "embedding"
_ROWS, _Q, _SCALE, _HALF = (
    f"{SPARSE_KEY}.rows",
    f"{SPARSE_KEY}.delta_q",
    f"{SPARSE_KEY}.delta_scale",
    f"{SPARSE_KEY}.delta_fp16",
)


class UpdateError(ValueError):
    """A node's update cannot be turned into arrays of the global model's shapes."""


def to_record(weights: Weights) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def from_record(record: ArrayRecord) -> Weights:
    return {k: v.numpy() for k, v in record.items()}


def encode(new: Weights, base: Weights, touched_rows: np.ndarray | None, compression: str) -> ArrayRecord:
    """The update a node sends: dense fp32, or (with touched rows) sparse embedding deltas."""
    if compression == "none" or touched_rows is None or SPARSE_KEY not in new:
        return to_record(new)
    rows = np.asarray(touched_rows, dtype=np.int64)
    delta = new[SPARSE_KEY][rows].astype(np.float32) - base[SPARSE_KEY][rows]
    out = {k: v for k, v in new.items() if k != SPARSE_KEY}
    out[_ROWS] = rows.astype(np.int32)
    if compression == "fp16":
        out[_HALF] = delta.astype(np.float16)
    else:
        scale = np.abs(delta).max(axis=1) / 127.0 if len(rows) else np.zeros(0, np.float32)
        safe = np.where(scale > 0, scale, 1.0)
        out[_Q] = np.clip(np.rint(delta / safe[:, None]), -127, 127).astype(np.int8)
        out[_SCALE] = scale.astype(np.float32)
    return to_record(out)


def decode(record: ArrayRecord, base: Weights) -> Weights:
    """Full arrays from an update, against the global ``base`` it was trained from."""
    try:
        arrays = from_record(record)
    except Exception as exc:  # a corrupt payload is the node's fault, not the server's
        raise UpdateError(f"undecodable arrays ({type(exc).__name__})") from None
    if _ROWS not in arrays:
        return arrays
    rows = arrays.pop(_ROWS)
    if SPARSE_KEY not in base:
        raise UpdateError(f"sparse rows sent for a model without {SPARSE_KEY!r}")
    table = base[SPARSE_KEY]
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise UpdateError("embedding rows must be a 1-d integer array")
    if len(rows) and (rows.min() < 0 or rows.max() >= table.shape[0] or len(np.unique(rows)) != len(rows)):
        raise UpdateError("embedding rows out of range or repeated")
    if _HALF in arrays:
        delta = arrays.pop(_HALF).astype(np.float32)
    elif _Q in arrays and _SCALE in arrays:
        q, scale = arrays.pop(_Q), arrays.pop(_SCALE)
        if q.dtype != np.int8 or scale.shape != (len(rows),):
            raise UpdateError("int8 embedding delta has the wrong dtype or scale shape")
        delta = q.astype(np.float32) * scale.astype(np.float32)[:, None]
    else:
        raise UpdateError("sparse embedding update without its delta")
    if delta.shape != (len(rows), table.shape[1]):
        raise UpdateError(
            f"embedding delta shape {delta.shape} does not match {len(rows)} rows of width {table.shape[1]}"
        )
    full = table.copy()
    full[rows] += delta
    arrays[SPARSE_KEY] = full
    # in the global model's order: strategies such as Flower's FedAvgM pair arrays by position
    return {**{k: arrays.pop(k) for k in base if k in arrays}, **arrays}


def dense_bytes(weights: Weights) -> int:
    """Size of a dense fp32 copy of the model: what an uncompressed update would carry."""
    return int(sum(v.size * 4 for v in weights.values()))
