"""Bad input gets a 4xx JSON body naming the problem; nothing crashes or leaks a traceback."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_worker.app import create_app
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerThread
from tests.support.edge import edge_settings
from tests.support.env import need

LIMITS = {"max_text_chars": 200, "max_texts": 4, "max_sessions": 3, "max_body_bytes": 4096}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = create_app(edge_settings(tmp_path_factory.mktemp("edge"), **LIMITS))
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture(scope="module")
def client(edge: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge, timeout=10) as http:
        yield http


def binary(inputs: list[dict[str, Any]], data: bytes, declared: str | None = None, **extra: Any) -> dict[str, Any]:
    """A request in the binary tensor data extension: a JSON header, then raw tensor bytes."""
    header = json.dumps({"inputs": inputs, **extra}).encode()
    length = str(len(header)) if declared is None else declared
    return {"content": header + data, "headers": {"Inference-Header-Content-Length": length}}


def text_tensor(size: int, **parameters: Any) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size, **parameters}}


HI = struct.pack("<I", 2) + b"hi"  # one BYTES element
FIELDS_BUT_WEEKEND = [
    {"name": name, "datatype": "FP64", "shape": [1], "data": [1.0]}
    for name in SESSION
    if name not in ("Weekend", "Region", "Month", "OperatingSystems", "Browser", "TrafficType", "VisitorType")
]


def _raw(body: dict[str, Any], number: str) -> dict[str, Any]:
    """``body`` as JSON text with its ``"<n>"`` replaced by ``number`` (which json.dumps cannot write)."""
    text = json.dumps(body).replace('"<n>"', number)
    return {"content": text, "headers": {"Content-Type": "application/json"}}


CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (method, path, request kwargs, status, words the error names)
    ("POST", "/v1/emotion", {"json": {"text": ""}}, 422, "text"),
    ("POST", "/v1/emotion", {"json": {"text": "   "}}, 422, "text"),
    ("POST", "/v1/emotion", {"json": {"text": "x" * 201}}, 422, "at most 200 characters"),
    ("POST", "/v1/emotion", {"json": {"texts": ["a"] * 5}}, 422, "at most 4 items"),
    ("POST", "/v1/emotion", {"json": {"texts": []}}, 422, "texts"),
    ("POST", "/v1/emotion", {"json": {"texts": "not a list"}}, 422, "texts"),
    ("POST", "/v1/emotion", {"json": {"text": 42}}, 422, "text"),
    ("POST", "/v1/emotion", {"json": {}}, 422, "exactly one of 'text' or 'texts'"),
    ("POST", "/v1/emotion", {"json": {"text": "a", "texts": ["b"]}}, 422, "exactly one of"),
    ("POST", "/v1/emotion", {"json": {"txt": "a"}}, 422, "txt"),
    ("POST", "/v1/emotion", {"json": ["a"]}, 422, "object"),
    ("POST", "/v1/emotion", {"content": b"{not json"}, 400, "not valid JSON"),
    ("POST", "/v1/emotion", {"content": b""}, 400, "empty body"),
    ("POST", "/v1/emotion", {"content": b"\xff\xfe"}, 400, "not valid JSON"),
    ("POST", "/v1/emotion", {"content": b"[" * 5000}, 413, "limit of 4096 bytes"),
    ("POST", "/v1/funnel/score", {"json": {"session": {**SESSION, "BounceRates": "high"}}}, 422, "BounceRates"),
    (
        "POST",
        "/v1/funnel/score",
        {"json": {"session": {k: v for k, v in SESSION.items() if k != "Month"}}},
        422,
        "Month",
    ),
    ("POST", "/v1/funnel/score", {"json": {"sessions": [SESSION] * 4}}, 422, "at most 3 items"),
    ("POST", "/v1/funnel/score", {"json": {"session": {**SESSION, "PageValues": [1]}}}, 422, "PageValues"),
    ("POST", "/v1/funnel/score", {"json": {"session": "checkout"}}, 422, "session"),
    ("POST", "/v1/funnel/score", {"json": {"session": {**SESSION, "Administrative": 10**400}}}, 422, "Administrative"),
    # floats are finite and bounded: a 1e309 parses to inf, which no answer could carry back
    ("POST", "/v1/funnel/score", _raw({"session": {**SESSION, "BounceRates": "<n>"}}, "1e309"), 422, "BounceRates"),
    ("POST", "/v1/funnel/score", _raw({"session": {**SESSION, "ExitRates": "<n>"}}, "-1e300"), 422, "ExitRates"),
    ("POST", "/v1/feedback", {"json": {"text": "hi", "labels": ["glee"]}}, 422, "glee"),
    ("POST", "/v1/feedback", {"json": {"text": "hi", "labels": []}}, 422, "labels"),
    ("POST", "/v1/feedback", {"json": {"text": "hi", "labels": ["joy"], "visitor_id": "a b"}}, 422, "visitor_id"),
    ("POST", "/v1/funnel/outcome", {"json": {"session": SESSION, "converted": "yes"}}, 422, "converted"),
    (
        "POST",
        "/v1/funnel/outcome",
        {"json": {"session": {**SESSION, "Weekend": "maybe"}, "converted": True}},
        422,
        "Weekend",
    ),
    ("DELETE", "/v1/privacy/visitors/v-1", {}, 401, "operator token"),
    ("GET", "/v2/models/churn", {}, 404, "unknown model 'churn'"),
    ("GET", "/v2/models/churn/ready", {}, 404, "unknown model"),
    ("POST", "/v2/models/churn/infer", {"json": {"inputs": []}}, 404, "unknown model"),
    (
        "POST",
        "/v2/models/emotion/infer",
        {"json": {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1], "data": [1]}]}},
        400,
        "takes one input 'text'",
    ),
    (
        "POST",
        "/v2/models/emotion/infer",
        {"json": {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}},
        400,
        "datatype BYTES",
    ),
    (
        "POST",
        "/v2/models/emotion/infer",
        {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}},
        400,
        "1 data elements",
    ),
    (
        "POST",
        "/v2/models/emotion/infer",
        {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]}},
        422,
        "must be strings",
    ),
    (
        "POST",
        "/v2/models/emotion/infer",
        {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [5], "data": list("abcde")}]}},
        422,
        "1 to 4 elements",
    ),
    (
        "POST",
        "/v2/models/emotion/infer",
        {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [[[["a"]]]]}]}},
        400,
        "nested deeper",
    ),
    (
        "POST",
        "/v2/models/emotion/infer",
        {
            "json": {
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
                "outputs": [{"name": "logits"}],
            }
        },
        400,
        "no output 'logits'",
    ),
    (
        "POST",
        "/v2/models/funnel/infer",
        {"json": {"inputs": [{"name": "session", "datatype": "BYTES", "shape": [1], "data": ["{oops"]}]}},
        422,
        "session[0]",
    ),
    (
        "POST",
        "/v2/models/funnel/infer",
        {"json": {"inputs": [{"name": "session", "datatype": "BYTES", "shape": [1], "data": [{"Month": "Nov"}]}]}},
        422,
        "missing",
    ),
    # the binary tensor data extension: every size is checked against the bytes actually sent
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(6)], HI, declared="x"), 400, "is not a number"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(6)], HI, declared="9999"), 400, "body has only"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(7)], HI), 400, "runs past the 6 bytes"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(3)], HI), 400, "sum to 3"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(6)], struct.pack("<I", 99) + b"hi"), 400, "claims 99"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(2)], b"hi"), 400, "ends before element 0"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(6)], struct.pack("<I", 2) + b"\xff\xfe"), 400, "UTF-8"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(-1)], b""), 422, "greater than or equal to 0"),
    ("POST", "/v2/models/emotion/infer", binary([text_tensor(6, shared_memory_region="r")], HI), 400, "shared memory"),
    ("POST", "/v2/models/emotion/infer", binary([{**text_tensor(6), "data": ["hi"]}], HI), 400, "both data and"),
    ("POST", "/v2/models/emotion/infer", {"json": {"inputs": [text_tensor(6)]}}, 400, "no Inference-Header"),
    (
        "POST",
        "/v2/models/emotion/infer",
        {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}},
        400,
        "no data and no parameters.binary_data_size",
    ),
    (
        "POST",
        "/v2/models/emotion/infer",
        binary([text_tensor(6)], HI, outputs=[{"name": "scores", "parameters": {"binary_data": "yes"}}]),
        422,
        "binary_data",
    ),
    # several inputs: the funnel's fields
    ("POST", "/v2/models/funnel/infer", {"json": {"inputs": FIELDS_BUT_WEEKEND}}, 400, "missing: Browser, Month"),
    (
        "POST",
        "/v2/models/funnel/infer",
        {"json": {"inputs": [{"name": "Weekend", "datatype": "BOOL", "shape": [1], "data": ["no"]}]}},
        400,
        "takes the 16 inputs",
    ),
    (
        "POST",
        "/v2/models/funnel/infer",
        {"json": {"inputs": [{"name": "session", "datatype": "BYTES", "shape": [1], "data": ["{}"]}] * 2}},
        400,
        "given 2 times",
    ),
    ("GET", "/v1/nothing-here", {}, 404, "no route /v1/nothing-here"),
    ("GET", "/v1/emotion", {}, 405, "method GET not allowed"),
    ("PUT", "/v2/health/ready", {}, 405, "not allowed"),
]


@pytest.mark.parametrize(
    "method, path, kwargs, status, words", CASES, ids=[f"{c[0]} {c[1]} {c[3]} {c[4]}" for c in CASES]
)
def test_bad_request_gets_a_json_4xx_naming_the_problem(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int, words: str
) -> None:
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert words in error
    assert "Traceback" not in error and 'File "' not in error


def test_a_body_over_the_limit_is_refused_while_streaming(client: httpx.Client) -> None:
    """No Content-Length (chunked): the limit applies to the bytes as they arrive."""

    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(100):
            yield b"a" * 100

    response = client.post("/v1/emotion", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit of 4096 bytes" in response.json()["error"]


def test_a_bad_session_fails_only_its_own_request_in_a_shared_batch(edge: str) -> None:
    bad = {**SESSION, "VisitorType": 3.5}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=edge, timeout=10) as http:
            calls = [http.post("/v1/funnel/score", json={"session": bad if i % 4 == 0 else SESSION}) for i in range(24)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert statuses == [422 if i % 4 == 0 else 200 for i in range(24)], [r.text for r in responses]
    assert "VisitorType" in responses[0].json()["error"]
    with httpx.Client(base_url=edge) as http:
        assert http.get("/v2/health/ready").status_code == 200


def test_schemathesis_finds_no_server_error(edge: str, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    need(st is not None, "schemathesis is not installed (pip install '.[dev]')")
    result = subprocess.run(
        [
            st,
            "run",
            f"{edge}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "10",
            "--seed",
            "7",
            "--phases",
            "coverage,fuzzing",
            "--warnings",
            "off",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
