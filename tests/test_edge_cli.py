"""``nexus edge serve`` as an operator runs it, ``nexus demo``, and a smoke run of ``nexus bench edge``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from conftest import ROOT
from test_edge_support import BUNDLES, SESSION

from edge_worker.bench import bench_edge, run_httpx
from edge_worker.echo import create_echo_app
from edge_worker.server import ServerProcess, edge_argv, free_port
from hub.server import ServerThread
from nexus_cli import build_parser


def test_serve_with_two_workers_reads_arguments_and_environment(tmp_path: Path) -> None:
    port = free_port()
    argv = edge_argv(port, models_dir=BUNDLES, data_dir=tmp_path / "data", workers=2)
    with ServerProcess("edge", argv, port, env={"NEXUS_MAX_TEXTS": "1", "NEXUS_FUNNEL_BACKEND": "tflite"}) as edge:
        with httpx.Client(base_url=edge.url, timeout=10) as http:
            # both workers answer (uvicorn spreads connections over them)
            for _ in range(4):
                assert http.post("/v1/emotion", json={"texts": ["fine"]}).status_code == 200
            too_many = http.post("/v1/emotion", json={"texts": ["a", "b"]})
            assert too_many.status_code == 422 and "at most 1 item" in too_many.json()["error"]
            assert http.get("/v2/models/funnel").json()["platform"] == "tflite"
            assert http.post("/v1/funnel/score", json={"session": SESSION}).status_code == 200
            assert (tmp_path / "data" / "edge.sqlite3").exists()
        assert edge.stop() == 0  # SIGTERM: graceful shutdown, clean exit


def test_serve_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "NEXUS_MAX_BATCH": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "nexus_cli", "edge", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert (
        result.stderr.startswith("nexus: error: invalid edge settings (max_batch") and "Traceback" not in result.stderr
    )


def test_demo_shows_real_answers_and_stops_its_node() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nexus_cli", "demo", "--standalone"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert '<- 200 {"ready":true}' in out
    assert "P(purchase) = " in out and '"model":"emotion"' in out and '"model_name":"emotion"' in out
    assert "<- 422 " in out and "<- 400 " in out and "<- 404 " in out
    assert out.rstrip().endswith("done.")


def test_demo_stops_its_nodes_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_DEMO], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    port = int(out.split("edge-port=")[1].split()[0])
    with httpx.Client() as http:
        try:
            http.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1)
            raise AssertionError("the edge node outlived the interrupted demo")
        except httpx.ConnectError:
            pass


# Interrupts the demo the way a terminal's Ctrl-C does (SIGINT to our process) once the
# node is up, then reports the port so the test can check nothing still listens there.
_INTERRUPTED_DEMO = """
import os, signal, sys
import nexus_demo
from nexus_cli import main
real = nexus_demo._show_edge
def interrupted(console, edge):
    print("edge-port=%d" % edge.port, flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    real(console, edge)
nexus_demo._show_edge = interrupted
sys.exit(main(["demo", "--standalone"]))
"""


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


def test_the_deployed_command_lines_are_accepted() -> None:
    """deploy/ runs `nexus edge serve` with these flags; a typo there would crash the pod."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "edge.yaml").read_text()))
    pods = [d["spec"]["template"]["spec"] for d in docs if d and d.get("kind") == "Deployment"]
    argvs = [c["args"] for pod in pods for c in pod["containers"] if c["name"] == "edge"]
    assert argvs
    for argv in argvs:
        args = build_parser().parse_args(argv)
        assert args.func.__module__ == "edge_worker.cli" and args.no_supernode and args.hub
