"""A real S3-compatible server on loopback for the blob store's tests: moto's ``moto_server``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from nexus_tools.processes import free_port
from tests.support.env import need, port_open

#: what boto3 signs requests with (moto accepts any); set in the environment, as a hub reads it
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "nexus-test",
    "AWS_SECRET_ACCESS_KEY": "nexus-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_server() -> Iterator[str]:
    """``moto_server`` on a free loopback port until the block ends; its endpoint URL."""
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    need(binary is not None, "moto_server is missing (pip install 'moto[server]', a dev dependency)")
    assert binary is not None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port, timeout=0.2):
            assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the server: each test gets its own."""
    name = f"nexus-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=name)
    client.close()
    return name
