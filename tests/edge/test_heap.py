"""edge_worker/heap.py: a server process's app settles its heap once started (gc_tuning), and only then.

Freezing is process-wide, so each case runs the uvicorn factory in a child process of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_worker.heap import YOUNG_THRESHOLD

CHILD = """
import gc, json
from starlette.testclient import TestClient
from edge_worker.app import create_app_from_env
app = create_app_from_env()
before = (gc.get_freeze_count(), gc.get_threshold()[0])
with TestClient(app) as client:
    assert client.post("/v1/emotion", json={"text": "so glad"}).status_code == 200
    after = (gc.get_freeze_count(), gc.get_threshold()[0])
print(json.dumps({"before": before, "after": after}))
"""


def _child(tmp_path: Path, gc_tuning: str) -> dict[str, list[int]]:
    env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path / gc_tuning), "NEXUS_GC_TUNING": gc_tuning}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("gc_tuning", ["true", "false"])
def test_the_server_factory_freezes_the_start_up_heap_only_with_gc_tuning(tmp_path: Path, gc_tuning: str) -> None:
    figures = _child(tmp_path, gc_tuning)
    assert figures["before"] == [0, 700]  # building the app settles nothing: the lifespan does, once started
    if gc_tuning == "true":
        frozen, threshold = figures["after"]
        assert frozen > 50_000 and threshold == YOUNG_THRESHOLD  # the app, its models and modules
    else:
        assert figures["after"] == [0, 700]
