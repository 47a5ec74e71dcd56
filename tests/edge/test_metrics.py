"""/metrics over several worker processes: the merge rules, the shared files, a real
``nexus edge serve --workers 2`` answering one consistent, never-decreasing count, and its
scrapes passing ``promtool check metrics`` and Prometheus' own Python parser."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from edge_worker.metrics import LATENCY_BUCKETS, Registry, WorkerSnapshot, edge_registry, merge
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerProcess, edge_argv, free_port
from nexus_wire.datadir import EdgeDataDir
from tests.support.edge import BUNDLES
from tests.support.env import ROOT
from tests.support.metrics import parse, promtool_check, types

EMOTION_200 = (("route", "/v1/emotion"), ("method", "POST"), ("status", "200"))


def _line(text: str, series: str) -> float | None:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


def _worker(live: bool, setup: Callable[[Registry], None]) -> WorkerSnapshot:
    registry = edge_registry()
    setup(registry)
    return WorkerSnapshot(live, registry.snapshot())


# --- the merge ------------------------------------------------------------------------------


def test_counters_and_histograms_sum_over_every_worker_even_exited_ones() -> None:
    own = edge_registry()
    own.inc("nexus_edge_requests_total", EMOTION_200, 3)
    own.observe("nexus_edge_request_duration_seconds", (("route", "/v1/emotion"),), 0.002)

    def other(registry: Registry) -> None:
        registry.inc("nexus_edge_requests_total", EMOTION_200, 4)
        registry.observe("nexus_edge_request_duration_seconds", (("route", "/v1/emotion"),), 0.002)
        registry.observe("nexus_edge_request_duration_seconds", (("route", "/v1/emotion"),), 7.0)

    text = "\n".join(
        line for f in merge(own.snapshot(), [_worker(True, other), _worker(False, other)]) for line in f.render()
    )
    assert _line(text, 'nexus_edge_requests_total{route="/v1/emotion",method="POST",status="200"}') == 3 + 4 + 4
    hist = 'nexus_edge_request_duration_seconds_{}{{route="/v1/emotion"{}}}'
    assert _line(text, hist.format("count", "")) == 5
    assert _line(text, hist.format("sum", "")) == 0.002 * 3 + 14.0
    assert _line(text, hist.format("bucket", ',le="0.0025"')) == 3
    assert LATENCY_BUCKETS[-1] == 5.0 and _line(text, hist.format("bucket", ',le="5"')) == 3
    assert _line(text, hist.format("bucket", ',le="+Inf"')) == 5


def test_gauges_come_from_live_workers_only_summed_or_as_the_union() -> None:
    own = edge_registry()
    own.set("nexus_edge_queue_depth", (("model", "emotion"),), 2)
    own.set("nexus_edge_model_loaded_info", (("model", "emotion"), ("version", "2"), ("backend", "onnx")), 1)

    def mid_swap(registry: Registry) -> None:  # a live worker still on version 1
        registry.set("nexus_edge_queue_depth", (("model", "emotion"),), 5)
        registry.set("nexus_edge_model_loaded_info", (("model", "emotion"), ("version", "1"), ("backend", "onnx")), 1)

    def exited(registry: Registry) -> None:
        registry.set("nexus_edge_queue_depth", (("model", "emotion"),), 100)
        registry.set("nexus_edge_model_loaded_info", (("model", "emotion"), ("version", "0"), ("backend", "onnx")), 1)

    text = "\n".join(
        line for f in merge(own.snapshot(), [_worker(True, mid_swap), _worker(False, exited)]) for line in f.render()
    )
    assert _line(text, 'nexus_edge_queue_depth{model="emotion"}') == 7
    loaded = re.findall(
        r'^nexus_edge_model_loaded_info\{model="emotion",version="(\d+)",backend="onnx"\} 1$', text, re.M
    )
    assert sorted(loaded) == ["1", "2"]


def test_a_family_only_another_worker_declared_is_shown() -> None:
    own = edge_registry()

    def synced(registry: Registry) -> None:  # e.g. the sync agent's families, declared late
        registry.declare("nexus_edge_hub_consecutive_failures", "gauge", "failed sync cycles in a row")
        registry.set("nexus_edge_hub_consecutive_failures", (), 3)

    text = "\n".join(line for f in merge(own.snapshot(), [_worker(True, synced)]) for line in f.render())
    assert "# TYPE nexus_edge_hub_consecutive_failures gauge" in text
    assert _line(text, "nexus_edge_hub_consecutive_failures") == 3


# --- the shared files -------------------------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
from edge_worker.metrics import edge_registry
registry = edge_registry()
registry.share(Path(sys.argv[1]))
registry.inc("nexus_edge_requests_total", (("route", "/v1/emotion"), ("method", "POST"), ("status", "200")), 10)
registry.set("nexus_edge_queue_depth", (("model", "emotion"),), 50)
registry.publish()
"""


def test_workers_exchange_snapshots_through_the_metrics_dir(tmp_path: Path) -> None:
    directory = EdgeDataDir(tmp_path).metrics
    a, b = edge_registry(), edge_registry()
    a.share(directory)
    b.share(directory)
    # a worker process that published and then died without its exit snapshot (killed)
    subprocess.run([sys.executable, "-c", _CHILD, str(directory)], check=True, cwd=ROOT, timeout=60)
    series = 'nexus_edge_requests_total{route="/v1/emotion",method="POST",status="200"}'

    a.inc("nexus_edge_requests_total", EMOTION_200, 1)
    first = a.render()  # publishes what it shows
    assert _line(first, series) == 11
    assert _line(first, 'nexus_edge_queue_depth{model="emotion"}') is None  # the dead worker's queue is gone
    assert _line(b.render(), series) == 11  # b reads a's file: no step back whoever answers

    b.inc("nexus_edge_requests_total", EMOTION_200, 2)
    b.publish(exited=True)
    assert _line(a.render(), series) == 13
    assert sorted(p.suffix for p in directory.iterdir()) == [".json"] * 3  # no tmp file left behind
    assert sorted(json.loads(p.read_text())["exited"] for p in directory.iterdir()) == [False, False, True]


# --- a real server with two workers -------------------------------------------------------------


def _scrape(url: str) -> str:
    # A new connection each time, so the kernel hands scrapes to either worker.
    with httpx.Client(timeout=10) as http:
        return http.get(url + "/metrics").text


def _emotion_count(text: str) -> float:
    return _line(text, 'nexus_edge_requests_total{route="/v1/emotion",method="POST",status="200"}') or 0.0


def _scrapes_per_worker(directory: Path) -> dict[str, float]:
    out = {}
    for path in directory.glob("*.json"):
        values = json.loads(path.read_text())["families"]["nexus_edge_requests_total"]["values"]
        out[path.name] = sum(v for labels, v in values if ["route", "/metrics"] in labels)
    return out


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_workers_report_one_count_that_never_decreases(tmp_path: Path) -> None:
    data = tmp_path / "data"
    directory = EdgeDataDir(data).metrics
    directory.mkdir(parents=True)
    # a previous run's worker: a restarted server starts from zero
    stale = edge_registry()
    stale.share(directory)
    stale.inc("nexus_edge_requests_total", EMOTION_200, 1000)
    stale.publish(exited=True)

    n = 120
    port = free_port()
    with ServerProcess("edge", edge_argv(port, models_dir=BUNDLES, data_dir=data, workers=2), port) as edge:
        seen: list[float] = []
        done = threading.Event()

        def send() -> None:
            try:
                with httpx.Client(
                    base_url=edge.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
                ) as http:
                    for i in range(n):
                        assert http.post("/v1/emotion", json={"text": f"fine {i}"}).status_code == 200
            finally:
                done.set()

        sender = threading.Thread(target=send)
        sender.start()
        while not done.is_set():  # scrapes while the count climbs
            seen.append(_emotion_count(_scrape(edge.url)))
        sender.join()

        def all_counted() -> bool:  # within the publish interval
            seen.append(_emotion_count(_scrape(edge.url)))
            return seen[-1] == n

        _wait(all_counted, 10, f"{n} requests in /metrics")
        for _ in range(30):  # whichever worker answers
            seen.append(_emotion_count(_scrape(edge.url)))
        assert seen[-30:] == [n] * 30
        assert seen == sorted(seen), seen
        assert max(seen) == n

        # both workers answered scrapes (each counts the ones it answered in its own file)
        _wait(lambda: len(s := _scrapes_per_worker(directory)) == 2 and all(s.values()), 5, "both workers' files")

        # SIGHUP: uvicorn restarts every worker gracefully; the exited workers' counts stay
        before = set(_scrapes_per_worker(directory))
        assert edge.pid is not None
        os.kill(edge.pid, signal.SIGHUP)
        restarted: list[float] = []

        def new_workers_up() -> bool:
            try:
                restarted.append(_emotion_count(_scrape(edge.url)))
            except httpx.HTTPError:
                return False
            files = {p.name: json.loads(p.read_text()) for p in directory.glob("*.json")}
            return len(files) == 4 and all(files[name]["exited"] for name in before)

        _wait(new_workers_up, 60, "two restarted workers")
        for _ in range(10):
            restarted.append(_emotion_count(_scrape(edge.url)))
        assert restarted == [n] * len(restarted), restarted
        text = _scrape(edge.url)
        assert len(re.findall(r'^nexus_edge_model_loaded_info\{model="emotion",.*\} 1$', text, re.M)) == 1
        assert _line(text, 'nexus_edge_queue_depth{model="emotion"}') == 0
        assert edge.stop() == 0


def test_batch_size_buckets_run_from_one_to_the_largest_batch() -> None:
    registry = edge_registry(max_batch=48)
    registry.observe("nexus_edge_batch_size", (("model", "emotion"),), 48)
    bounds = re.findall(r'^nexus_edge_batch_size_bucket\{model="emotion",le="([^"]+)"\}', registry.render(), re.M)
    assert bounds == ["1", "2", "4", "8", "16", "32", "48", "+Inf"]


def test_scrapes_of_two_workers_pass_promtool_and_the_prometheus_parser(tmp_path: Path) -> None:
    port = free_port()
    argv = edge_argv(port, models_dir=BUNDLES, data_dir=tmp_path / "data", workers=2)
    with ServerProcess("edge", argv, port) as edge:
        with httpx.Client(base_url=edge.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            for i in range(20):  # new connections: both workers take some
                assert http.post("/v1/emotion", json={"texts": [f"great {i}", "awful"]}).status_code == 200
                assert http.post("/v1/funnel/score", json={"session": SESSION}).status_code == 200
            assert http.post("/v1/emotion", json={"text": ""}).status_code == 422
            assert http.get("/no/such/route").status_code == 404
        time.sleep(1.5)  # past the publish interval: every worker's snapshot is on disk
        scrapes = [_scrape(edge.url) for _ in range(6)]  # whichever worker answers
        assert edge.stop() == 0
    for text in scrapes:
        promtool_check(text)
        found = parse(text)  # raises on anything the parser cannot read
        assert types(text)["nexus_edge_request_duration_seconds"] == "histogram"
        assert types(text)["nexus_edge_requests"] == "counter"  # the parser names counters without _total
        emotion = frozenset({("route", "/v1/emotion")})
        assert found["nexus_edge_request_duration_seconds_count"][emotion] >= 21
        assert found["nexus_edge_request_duration_seconds_bucket"][emotion | {("le", "+Inf")}] >= 21
        assert found["nexus_edge_inference_items_total"][frozenset({("model", "emotion")})] == 40
        assert sum(found["nexus_edge_batch_size_count"].values()) > 0
        assert (
            found["nexus_edge_requests_total"][
                frozenset({("route", "/v1/emotion"), ("method", "POST"), ("status", "422")})
            ]
            == 1
        )
