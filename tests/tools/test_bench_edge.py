"""``nexus bench edge`` (nexus_tools/bench_edge.py): a smoke run, its load generators, and the rule
every ``nexus bench`` keeps (nexus_tools/bench_rule.py): no wrk, no run; no saturated baseline, no ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.errors import NexusError
from nexus_cli import main
from nexus_tools.bench_edge import bench_edge, parse_wrk, print_report, run_httpx
from nexus_tools.bench_rule import (
    ECHO_RPS_PER_WORKER,
    GENERATOR_SHARE,
    check_echo,
    check_headroom,
    echo_floor,
    usable_cores,
)
from nexus_tools.echo import GRPC_PORT_ENV, create_echo_app
from nexus_tools.grpc_load import emotion_request, run_grpc
from nexus_tools.processes import ServerThread, free_port
from tests.support.edge import BUNDLES


def test_an_httpx_smoke_run_reports_every_figure_but_no_ratio_and_says_it_is_invalid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = bench_edge(
        duration=1.0, connections=4, workers=1, generator="httpx", models_dir=BUNDLES, show_progress=False
    )
    for key in (
        "echo_rps",
        "emotion_rps",
        "funnel_rps",
        "emotion_nobatch_rps",
        "emotion_nogc_rps",
        "grpc_echo_rps",
        "grpc_emotion_rps",
    ):
        assert report[key] > 0, report
    for key in ("echo_p50_ms", "echo_p99_ms", "emotion_p50_ms", "emotion_p99_ms", "funnel_p99_ms"):
        assert key in report
    assert report["generator"] == "httpx" and report["connections"] == 4
    assert report["emotion_errors"] == 0 and report["funnel_errors"] == 0 and report["grpc_emotion_errors"] == 0
    # the figures measure the generator: the report says so and holds no ratio that could pass for a result
    assert report["valid"] is False and "measure the generator" in str(report["invalid_reason"])
    for ratio in ("ratio", "batching_gain", "gc_gain", "nogc_ratio", "grpc_ratio", "grpc_vs_http_emotion"):
        assert report[ratio] is None
    assert report["edge_start_s"] > 0 and report["edge_rss_mib"] > 50  # the edge's processes, models loaded
    # the accurate tier is measured where the repository holds it, and the report says when it is not
    if report["accurate_note"] is None:
        assert report["emotion_accurate_rps"] > 0 and report["emotion_accurate_errors"] == 0
    else:
        assert report["accurate_note"] == f"not measured: no emotion-accurate bundle in {BUNDLES}"
    print_report(report, as_json=True)
    assert json.loads(capsys.readouterr().out)["valid"] is False
    print_report(report, as_json=False)
    assert capsys.readouterr().out.startswith("NOT A MEASUREMENT OF THE EDGE: the httpx generator")


@pytest.mark.parametrize("bench", ["edge", "funnels"])
def test_without_wrk_a_bench_refuses_to_run_and_says_how_to_install_it(
    bench: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk on it: no silent fallback to a generator that measures itself
    assert main(["bench", bench, "--json", "--duration", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no figures at all
    assert "needs wrk" in captured.err and "apt-get install wrk" in captured.err
    assert ("--generator httpx" in captured.err) == (bench == "edge")  # only the edge bench has a smoke generator


def test_a_run_whose_echo_is_under_the_floor_reports_no_ratio() -> None:
    floor = echo_floor(2)
    assert floor == ECHO_RPS_PER_WORKER * min(2, usable_cores())  # 5,000 on 2 cores
    check_echo("edge", floor, 2)
    with pytest.raises(NexusError, match=r"drove the bare echo at only 92 requests/s, below the floor .* no ratio"):
        check_echo("edge", 92.0, 2)
    assert echo_floor(1) == ECHO_RPS_PER_WORKER and echo_floor(64) == ECHO_RPS_PER_WORKER * usable_cores()


def test_a_figure_close_to_the_generators_own_ceiling_is_refused() -> None:
    check_headroom("hub", "heartbeats", GENERATOR_SHARE * 4000, 4000)
    with pytest.raises(NexusError, match=r"heartbeats of 3900/s is 98% of the 4000/s .* not reported"):
        check_headroom("hub", "heartbeats", 3900, 4000)


def test_the_grpc_generator_measures_the_grpc_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv(GRPC_PORT_ENV, str(port))
    with ServerThread(create_echo_app()):
        rps, p50, p99, requests, errors = run_grpc(f"127.0.0.1:{port}", emotion_request("hi"), 0.5, 4, 2)
    assert requests > 0 and errors == 0 and rps > 0 and 0 < p50 <= p99


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
