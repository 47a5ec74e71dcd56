"""A broken bundle download resumes where it broke off: the edge asks the hub for the rest
(``Range``), the hub answers 206, and the file is whole and checked (a real hub on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from edge_worker.sync import SyncAgent
from nexus_wire.payloads import BUNDLE_DOWNLOAD
from tests.support.edge import StandInRepository, sync_agent
from tests.support.hub import RunningHub, make_bundle

SIZE = 200_000


def _download(agent: SyncAgent, dest: Path, sha256: str | None) -> tuple[str, int]:
    """The file's digest as downloaded, and the bytes the hub sent for it."""

    async def once() -> tuple[str, int]:
        try:
            await agent.sync_once()  # enrolled, and the bundle installed
            gateway = agent.link.gateway
            before = gateway.bytes_in[BUNDLE_DOWNLOAD]
            got = await gateway.download_file("funnel", "1", "model.onnx", dest, SIZE + 10, sha256)
            return got, gateway.bytes_in[BUNDLE_DOWNLOAD] - before
        finally:
            await agent.link.aclose()

    return asyncio.run(once())


def test_a_broken_download_resumes_from_its_part(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"w", size=SIZE))
    hub.admin.promote("funnel", "1", "stable")
    content = b"w" + b"\0" * SIZE
    digest = hashlib.sha256(content).hexdigest()
    repo = StandInRepository(tmp_path / "edge" / "models")
    agent = sync_agent(hub.url, tmp_path / "edge", repo, hub.admin.create_token({})["token"])
    dest = tmp_path / "model.onnx"

    # what a download that broke off leaves: the first bytes in model.onnx.part
    dest.with_name("model.onnx.part").write_bytes(content[:150_000])
    assert _download(agent, dest, digest) == (digest, len(content) - 150_000)
    assert dest.read_bytes() == content and not dest.with_name("model.onnx.part").exists()

    # a part that is not this file's start: the resumed file does not hash right, fetched whole again
    dest.unlink()
    dest.with_name("model.onnx.part").write_bytes(b"x" * 1000)
    resumed_then_whole = len(content) - 1000 + len(content)
    assert _download(sync_agent(hub.url, tmp_path / "edge", repo), dest, digest) == (digest, resumed_then_whole)
    assert dest.read_bytes() == content

    # a part as long as the file or longer (416 from the hub): dropped, fetched whole
    dest.with_name("model.onnx.part").write_bytes(content + b"more")
    assert _download(sync_agent(hub.url, tmp_path / "edge", repo), dest, digest) == (digest, len(content))
    # without the digest to check a resumed file against, nothing is resumed
    dest.with_name("model.onnx.part").write_bytes(content[:10])
    assert _download(sync_agent(hub.url, tmp_path / "edge", repo), dest, None) == (digest, len(content))
