"""Open Inference Protocol v2 tensor data: JSON elements and raw bytes, both ways, for every datatype.

Raw bytes are what the HTTP binary tensor data extension and gRPC's ``raw_input_contents``
carry: the elements little-endian, row-major, unpadded; a BOOL is one byte (0 or 1); a BYTES
element is a 4-byte little-endian length and that many bytes. Decoding yields a flat list of
Python values (BYTES elements as text), whatever the transport, so a family's item builder sees
the same values from JSON, binary HTTP and gRPC. Every size is checked against the bytes
actually there before anything is allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from nexus_service.http import ApiError

#: the fixed-size datatypes and their little-endian numpy types (BF16 has none in numpy: refused)
FIXED: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*FIXED, "BYTES")
_LENGTH = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _flatten(name: str, data: list[Any], rank: int) -> list[Any]:
    """Row-major flattening of nested lists no deeper than the tensor's rank (no recursion)."""
    flat: list[Any] = []
    stack: list[tuple[list[Any], int, int]] = [(data, 0, 1)]
    while stack:
        values, index, depth = stack.pop()
        while index < len(values):
            value = values[index]
            index += 1
            if isinstance(value, list):
                if depth >= rank:
                    raise ApiError(
                        400, f"input {name!r}: tensor data is nested deeper than its shape's {rank} dimension(s)"
                    )
                stack.append((values, index, depth))
                stack.append((value, 0, depth + 1))
                break
            flat.append(value)
    return flat


def _text(name: str, index: int, value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ApiError(400, f"input {name!r}: BYTES element {index} is not UTF-8 text") from None


def _fits_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:  # JSON integers have no bound
        return False
    return True


def _check_element(name: str, datatype: str, index: int, value: Any) -> None:
    kind = FIXED[datatype].kind
    if kind == "b":
        ok = isinstance(value, bool)
    elif kind == "f":
        ok = type(value) is float or (isinstance(value, int) and not isinstance(value, bool) and _fits_float(value))
    else:
        info = np.iinfo(FIXED[datatype])
        ok = isinstance(value, int) and not isinstance(value, bool) and info.min <= value <= info.max
    if not ok:
        raise ApiError(400, f"input {name!r}: element {index} ({value!r:.40}) is not a {datatype} value")


def from_elements(name: str, datatype: str, shape: Sequence[int], data: list[Any]) -> list[Any]:
    """JSON ``data`` (nested no deeper than ``shape``), or gRPC typed contents (flat): the flat elements."""
    values = _flatten(name, data, max(1, len(shape)))
    count = element_count(shape)
    if count != len(values):
        raise ApiError(
            400, f"input {name!r} has shape {list(shape)} ({count} elements) but {len(values)} data elements"
        )
    if datatype == "BYTES":
        return [_text(name, i, v) if isinstance(v, bytes) else v for i, v in enumerate(values)]
    for index, value in enumerate(values):
        _check_element(name, datatype, index, value)
    if FIXED[datatype].kind == "f":
        return [float(v) for v in values]
    return values


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> list[Any]:
    """Raw tensor bytes: the flat elements, refused unless they are exactly what ``shape`` holds."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _split_bytes(name, count, raw)
    dtype = FIXED[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ApiError(
            400,
            f"input {name!r}: {len(raw)} bytes of {datatype} data, but shape {list(shape)} needs "
            f"{count} x {dtype.itemsize} = {count * dtype.itemsize}",
        )
    if datatype == "BOOL":
        flags = np.frombuffer(raw, dtype=np.uint8)
        if (flags > 1).any():
            raise ApiError(400, f"input {name!r}: a BOOL element must be the byte 0 or 1")
    return np.frombuffer(raw, dtype=dtype).tolist()


def _split_bytes(name: str, count: int, raw: bytes) -> list[str]:
    values: list[str] = []
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(raw):
            raise ApiError(400, f"input {name!r}: BYTES data ends before element {index} of {count}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise ApiError(400, f"input {name!r}: BYTES element {index} claims {length} bytes past the data's end")
        values.append(_text(name, index, raw[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise ApiError(400, f"input {name!r}: {len(raw) - offset} bytes of BYTES data after its {count} elements")
    return values


def to_raw(datatype: str, values: np.ndarray) -> bytes:
    """An output tensor's elements as raw tensor bytes."""
    if datatype == "BYTES":
        parts = []
        for value in values.ravel().tolist():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=FIXED[datatype]).tobytes()


def to_elements(datatype: str, values: np.ndarray) -> list[Any]:
    """An output tensor's elements, flat, as JSON values (BYTES as text)."""
    flat = values.ravel().tolist()
    if datatype == "BYTES":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat
