"""``nexus edge serve`` as an operator runs it, and the command lines deploy/ gives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from nexus_cli import build_parser
from nexus_tools.examples import SESSION
from nexus_tools.processes import ServerProcess, edge_argv, free_port
from tests.support.edge import BUNDLES
from tests.support.env import ROOT


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


def test_the_deployed_command_lines_are_accepted() -> None:
    """deploy/ runs `nexus edge serve` with these flags; a typo there would crash the pod."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "edge.yaml").read_text()))
    pods = [d["spec"]["template"]["spec"] for d in docs if d and d.get("kind") == "Deployment"]
    argvs = [c["args"] for pod in pods for c in pod["containers"] if c["name"] == "edge"]
    assert argvs
    for argv in argvs:
        args = build_parser().parse_args(argv)
        assert args.func.__module__ == "edge_worker.cli" and args.hub
        # its own SuperNode, guarded, over TLS with its key (docs/deploy.md)
        assert not args.no_supernode and args.superlink and args.superlink_root_cert and args.supernode_auth_key
