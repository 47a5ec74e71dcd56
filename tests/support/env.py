"""What a test may need from the machine: the shared data sets, a server on a port, a binary.

A test that needs something a user's machine may lack (the shared data sets, Redis,
Flower's binaries, Chromium, wrk) calls :func:`need`: it skips with the reason on a
user's machine and fails under ``CI=true``, where everything is always installed.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    need(path.exists(), f"{path} is missing (the shared data sets sit beside the project)")
    return path


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
