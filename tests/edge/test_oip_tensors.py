"""OIP v2 tensor data, both encodings, every datatype: what raw bytes and JSON elements decode to."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

from edge_worker import oip_tensors
from edge_worker.oip_tensors import FIXED, from_elements, from_raw, to_elements, to_raw
from nexus_service.http import ApiError

SAMPLES = {
    "BOOL": [True, False, True],
    "UINT8": [0, 7, 255],
    "UINT16": [0, 7, 65535],
    "UINT32": [0, 7, 2**32 - 1],
    "UINT64": [0, 7, 2**64 - 1],
    "INT8": [-128, 0, 127],
    "INT16": [-(2**15), 0, 2**15 - 1],
    "INT32": [-(2**31), 0, 2**31 - 1],
    "INT64": [-(2**63), 0, 2**63 - 1],
    "FP16": [-1.5, 0.0, 2.0],
    "FP32": [-1.5, 0.25, 3.0],
    "FP64": [-1.5, 1e300, 0.1],
}


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_raw_and_json_elements_decode_alike(datatype: str) -> None:
    values = np.array(SAMPLES[datatype], dtype=FIXED[datatype])
    raw = to_raw(datatype, values)
    assert len(raw) == 3 * FIXED[datatype].itemsize
    assert raw == values.astype(values.dtype.newbyteorder("<")).tobytes()  # little-endian, whatever the host
    decoded = from_raw("x", datatype, (3,), raw)
    assert decoded == from_elements("x", datatype, (3, 1), [[v] for v in SAMPLES[datatype]]) == SAMPLES[datatype]
    assert to_elements(datatype, values) == SAMPLES[datatype]


def test_bytes_elements_are_length_prefixed_text() -> None:
    raw = to_raw("BYTES", np.array([b"hi", "h\u00e9".encode(), b""], dtype=np.object_))
    assert raw == struct.pack("<I", 2) + b"hi" + struct.pack("<I", 3) + "h\u00e9".encode() + struct.pack("<I", 0)
    assert from_raw("t", "BYTES", (3,), raw) == ["hi", "h\u00e9", ""]
    assert from_elements("t", "BYTES", (2,), [b"hi", {"a": 1}]) == ["hi", {"a": 1}]  # gRPC bytes; JSON any value


@pytest.mark.parametrize(
    "datatype, shape, raw, words",
    [
        ("FP32", (2,), b"\x00" * 7, "7 bytes of FP32 data, but shape [2] needs 2 x 4 = 8"),
        ("BOOL", (1,), b"\x02", "the byte 0 or 1"),
        ("BYTES", (2,), struct.pack("<I", 1) + b"a", "ends before element 1 of 2"),
        ("BYTES", (1,), struct.pack("<I", 1) + b"ab", "1 bytes of BYTES data after its 1 elements"),
        ("BYTES", (1,), struct.pack("<I", 2**32 - 1), "claims 4294967295 bytes"),
    ],
)
def test_raw_data_must_be_exactly_what_the_shape_holds(
    datatype: str, shape: tuple[int, ...], raw: bytes, words: str
) -> None:
    with pytest.raises(ApiError, match=re.escape(words)) as refused:
        from_raw("x", datatype, shape, raw)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "datatype, value",
    [("INT8", 128), ("UINT8", -1), ("INT64", 1.5), ("INT32", True), ("BOOL", 1), ("FP32", "1"), ("FP64", 10**400)],
)
def test_json_elements_must_fit_their_datatype(datatype: str, value: object) -> None:
    with pytest.raises(ApiError, match=f"is not a {datatype} value"):
        from_elements("x", datatype, (1,), [value])


def test_every_protocol_datatype_but_bf16_is_known() -> None:
    assert set(oip_tensors.DATATYPES) == set(SAMPLES) | {"BYTES"}
