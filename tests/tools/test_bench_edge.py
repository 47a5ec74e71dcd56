"""``nexus bench edge`` (nexus_tools/bench_edge.py): a smoke run, and its httpx load generator."""

from __future__ import annotations

import json

import pytest

from models.errors import NexusError
from nexus_tools.bench_edge import bench_edge, parse_wrk, run_httpx
from nexus_tools.echo import create_echo_app
from nexus_tools.processes import ServerThread
from tests.support.edge import BUNDLES


def test_bench_smoke_reports_every_figure() -> None:
    report = bench_edge(duration=1.0, connections=4, workers=1, models_dir=BUNDLES, show_progress=False)
    for key in ("echo_rps", "emotion_rps", "funnel_rps", "emotion_nobatch_rps"):
        assert report[key] > 0, report
    for key in (
        "ratio",
        "batching_gain",
        "echo_p50_ms",
        "echo_p99_ms",
        "emotion_p50_ms",
        "emotion_p99_ms",
        "funnel_p99_ms",
    ):
        assert key in report
    assert report["generator"] in ("wrk", "httpx") and report["connections"] == 4
    assert report["emotion_errors"] == 0 and report["funnel_errors"] == 0
    json.dumps(report)


def test_the_httpx_fallback_generator_measures_a_live_server() -> None:
    with ServerThread(create_echo_app()) as echo:
        load = run_httpx(f"{echo.url}/echo", '{"text": "hi"}', duration=0.5, connections=4, threads=1)
    assert load.requests > 0 and load.errors == 0 and load.rps > 0 and 0 < load.p50_ms <= load.p99_ms


WRK_REPORT = """Running 2s test @ http://127.0.0.1:8000/v1/emotion
  Latency Distribution
     50%    5.50ms
     99%   14.70ms
  21228 requests in 2.00s, 3.10MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  10614.00
"""


def test_parse_wrk_reads_the_figures_and_refuses_a_report_without_them() -> None:
    load = parse_wrk(WRK_REPORT)
    assert (load.rps, load.p50_ms, load.p99_ms, load.requests, load.errors) == (10614.0, 5.5, 14.7, 21228, 3)
    with pytest.raises(NexusError, match="request rate"):
        parse_wrk(WRK_REPORT.replace("Requests/sec:  10614.00", ""))
