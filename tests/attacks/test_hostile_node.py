"""Issue 14, against a real ``nexus hub serve`` on loopback: a node (or a careless operator
script) sending numbers and bundles no real client would.

Before: a heartbeat with ``request_rate: "inf"`` made ``GET /v1/nodes`` answer 500 and
``nexus hub nodes list`` fail; ``audit_verified_at: 1e300`` made ``/dashboard/privacy``
answer 500; a counter ``count`` of 2**63 answered 500 (SQLite's OverflowError); a pushed
manifest whose ``files`` entry is not an object, or one nested a few thousand levels,
answered 500; and a refused push named the hub's temp dir. Now every number is finite and
bounded at the hub's edge (counts and their sums over nodes within 2**53 - 1), each such
input is a 4xx naming its field, and every operator view still answers.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.archive import pack
from hub.client import FunnelClient
from hub.schemas import LATEST_TIME, MAX_RATE
from nexus_tools.processes import free_port
from nexus_wire.counters import MAX_COUNT
from nexus_wire.datadir import HubDataDir
from tests.support.hub import EnrolledNode
from tests.support.processes import NEXUS, HubProcess

HEARTBEAT = "/v1/nodes/me/heartbeat"
COUNTERS = "/v1/nodes/me/counters"


class Hub:
    def __init__(self, process: HubProcess) -> None:
        self.process = process
        self.url = process.url
        self.token = HubDataDir(process.data_dir).admin_token.read_text().strip()
        self.http = httpx.Client(base_url=process.url, timeout=30)
        self.admin = FunnelClient(process.url, self.token)

    def enroll(self) -> EnrolledNode:
        reply = self.http.post("/v1/enroll", json={"token": self.admin.create_token({})["token"]})
        assert reply.status_code == 201, reply.text
        node = reply.json()
        return EnrolledNode(node["node_id"], {"Authorization": f"Bearer node.{node['node_id']}.{node['node_secret']}"})

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def push(self, archive: bytes) -> httpx.Response:
        headers = {**self.admin_headers(), "Content-Type": "application/x-tar"}
        return self.http.post("/v1/models", content=archive, headers=headers)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    process = HubProcess(tmp_path_factory.mktemp("hostile-node") / "hub", free_port(), "--no-superlink")
    running = Hub(process)
    try:
        yield running
    finally:
        running.http.close()
        running.admin.close()
        process.stop()


def _views_answer(hub: Hub) -> None:
    """Every operator view of the nodes: the API, the CLI and the dashboard pages."""
    assert hub.http.get("/v1/nodes", headers=hub.admin_headers()).status_code == 200
    cli = subprocess.run(
        [*NEXUS, "hub", "nodes", "list", "--hub", hub.url, "--token", hub.token],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    with httpx.Client(base_url=hub.url, timeout=30) as page:
        assert page.post("/dashboard/login", data={"token": hub.token}).status_code == 303
        for path in ("/dashboard/nodes", "/dashboard/privacy"):
            reply = page.get(path)
            assert reply.status_code == 200, (path, reply.text[-2000:])


def _refused(reply: httpx.Response, field: str) -> None:
    assert 400 <= reply.status_code < 500, (reply.status_code, reply.text)
    assert field in reply.json()["error"], reply.text


BEAT = {"health": "ok"}


#: (field, raw JSON value): each seen (or one like it) to break a view, or past a bound
OUT_OF_RANGE = [
    ("request_rate", '"inf"'),
    ("request_rate", '"NaN"'),
    ("request_rate", "1e309"),  # a JSON number that parses to inf
    ("request_rate", "1e12"),
    ("audit_verified_at", "1e300"),
    ("audit_verified_at", '"-inf"'),
    ("queue_depth", str(2**63)),
    ("bytes_sent", str(10**30)),
    ("audit_entries", str(2**53)),
]


def test_a_heartbeat_out_of_range_is_a_422_naming_the_field_and_the_views_answer(hub: Hub) -> None:
    node = hub.enroll()
    for field, raw in OUT_OF_RANGE:
        body = f'{{"health": "ok", "{field}": {raw}}}'
        reply = hub.http.post(HEARTBEAT, content=body, headers={**node.auth, "Content-Type": "application/json"})
        assert reply.status_code == 422, (field, raw, reply.text)
        assert field in reply.json()["error"], reply.text
    _views_answer(hub)


def test_the_largest_values_accepted_still_render(hub: Hub) -> None:
    node = hub.enroll()
    beat: dict[str, Any] = {
        **BEAT,
        "request_rate": MAX_RATE,
        "queue_depth": MAX_COUNT,
        "bundle_refusals": MAX_COUNT,
        "sync_errors": MAX_COUNT,
        "bytes_sent": MAX_COUNT,
        "audit_entries": MAX_COUNT,
        "audit_ok": True,
        "audit_verified_at": LATEST_TIME,
    }
    reply = hub.http.post(HEARTBEAT, json=beat, headers=node.auth)
    assert reply.status_code == 200, reply.text
    listed = {n["node_id"]: n for n in hub.admin.nodes()}
    assert listed[node.node_id]["heartbeat"]["request_rate"] == MAX_RATE
    _views_answer(hub)


@pytest.fixture(scope="module")
def experiment(hub: Hub) -> str:
    hub.admin.create_funnel("hostile", ["view", "buy"])
    hub.admin.create_experiment(
        {"id": "hx", "funnel_id": "hostile", "variants": [{"name": "A"}, {"name": "B"}], "decision_step": "buy"}
    )
    hub.admin.start("hx")
    return "hx"


def _counts(node: EnrolledNode, count: int, step: str = "view") -> dict[str, Any]:
    return {"node_id": node.node_id, "counts": [{"experiment": "hx", "variant": "A", "step": step, "count": count}]}


@pytest.mark.parametrize("count", [2**63, 2**62, MAX_COUNT + 1, -1])
def test_a_count_past_53_bits_is_a_422_naming_count(hub: Hub, experiment: str, count: int) -> None:
    node = hub.enroll()
    _refused(hub.http.post(COUNTERS, json=_counts(node, count), headers=node.auth), "count")
    assert hub.http.get(f"/v1/experiments/{experiment}/results", headers=hub.admin_headers()).status_code == 200


def test_counts_whose_sum_over_nodes_would_pass_53_bits_are_refused(hub: Hub, experiment: str) -> None:
    first, second = hub.enroll(), hub.enroll()
    reply = hub.http.post(COUNTERS, json=_counts(first, MAX_COUNT - 5, "buy"), headers=first.auth)
    assert reply.status_code == 200, reply.text
    # the first node may report its own count again (a retry), and lower (the G-counter keeps the max)
    assert hub.http.post(COUNTERS, json=_counts(first, 3, "buy"), headers=first.auth).status_code == 200
    assert hub.http.post(COUNTERS, json=_counts(second, 5, "buy"), headers=second.auth).status_code == 200
    _refused(hub.http.post(COUNTERS, json=_counts(second, 6, "buy"), headers=second.auth), "count")
    results = hub.http.get(f"/v1/experiments/{experiment}/results", headers=hub.admin_headers())
    assert results.status_code == 200, results.text
    _views_answer(hub)


# -- pushes ---------------------------------------------------------------------------------------


def _archive(tmp_path: Path, manifest: str) -> bytes:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a model")
    (folder / "manifest.json").write_text(manifest)
    return pack(folder)


def _nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _manifest(files: Any) -> str:
    return json.dumps({"format": "nexus-bundle/1", "name": "funnel", "version": "1", "files": files})


@pytest.mark.parametrize(
    "manifest",
    [
        _manifest({"model.onnx": "not an object"}),
        _manifest({"model.onnx": 7}),
        _manifest({"model.onnx": {"sha256": 7, "bytes": "11"}}),
        json.dumps({"format": "nexus-bundle/1", "name": 7, "version": "1", "files": {}}),
        json.dumps({"format": "nexus-bundle/1", "name": "funnel", "version": ["1"], "files": {}}),
        '{"format": "nexus-bundle/1", "name": "funnel", "version": "1", "files": {}, "x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}",
        _manifest({"model.onnx": {"sha256": "0" * 64, "bytes": 11, "deep": _nested(34)}}),
    ],
    ids=["files-str", "files-int", "entry-types", "name-int", "version-list", "nested-100000", "nested-34"],
)
def test_a_malformed_manifest_is_a_4xx_naming_it_without_server_paths(hub: Hub, tmp_path: Path, manifest: str) -> None:
    reply = hub.push(_archive(tmp_path, manifest))
    _refused(reply, "manifest")
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert tempfile.gettempdir() not in error and "nexus-push-" not in error, error
    assert hub.http.get("/healthz").status_code == 200


def test_no_refused_push_names_a_server_path(hub: Hub, tmp_path: Path) -> None:
    good_shape = _manifest({"model.onnx": {"sha256": "0" * 64, "bytes": 11}})  # wrong digest
    reply = hub.push(_archive(tmp_path, good_shape))
    _refused(reply, "sha256")
    assert tempfile.gettempdir() not in reply.text and "nexus-push-" not in reply.text, reply.text
