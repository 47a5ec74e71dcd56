"""Bundle archives in the blob store (a folder, or a real S3-compatible server on loopback):
written once by digest, read in ranges, served with HTTP Range; stores that hold archives
inline (written before the blob store) keep serving them."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from hub.blobs import BlobStore, BlobUnavailable, open_blob_store
from hub.funnel_config import Experiment, Funnel, Status, Variant
from hub.store import open_store
from hub.store.base import NodeRecord, RunRecord, Store
from hub.store.redis import LAYOUT, RedisStore
from nexus_wire.datadir import HubDataDir
from tests.support.hub import RunningHub, enroll_node, inline_archive, make_bundle


@pytest.fixture(params=["files", "s3"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return (tmp_path / "blobs").as_uri() if request.param == "files" else request.getfixturevalue("s3_blobs")


@pytest.fixture
def blobs(blob_url: str) -> Iterator[BlobStore]:
    store = open_blob_store(blob_url)
    yield store
    store.close()


def test_a_blob_is_written_once_by_its_digest_and_read_in_ranges(blobs: BlobStore, blob_url: str) -> None:
    data = bytes(range(256)) * 4096 + b"tail"
    digest = hashlib.sha256(data).hexdigest()
    assert blobs.size(digest) is None and blobs.open(digest) is None and blobs.read(digest) is None
    blobs.put(digest, data)
    blobs.put(digest, data)  # the same archive pushed again: one blob
    assert blobs.size(digest) == len(data)
    reader = blobs.open(digest)
    assert reader is not None
    with reader:  # one reader, many ranges, in any order
        assert reader.read(500_000, 70_000) == data[500_000:570_000]
        assert reader.read(0, 10) == data[:10]
        assert reader.read(len(data) - 5, 100) == data[-5:]
        assert reader.read(len(data) + 7, 100) == b""
        assert b"".join(reader.chunks(1000, len(data) - 1000, 1 << 16)) == data[1000:]
    assert blobs.read(digest) == data
    with pytest.raises(BlobUnavailable, match="another digest"):
        blobs.put(digest, data + b"!")
    with pytest.raises(BlobUnavailable, match="not a sha256"):
        blobs.put("../../" + digest[:58], data)
    if blob_url.startswith("file://"):  # private like the rest of the data dir
        path = Path(blob_url.removeprefix("file://")) / "sha256" / digest[:2] / digest
        assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700


def test_pushes_go_to_the_blob_store_and_downloads_answer_ranges(
    any_store: Store, blob_url: str, tmp_path: Path
) -> None:
    hub = RunningHub(tmp_path / "hub", any_store, blobs=blob_url)
    try:
        hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"weights", size=300_000))
        record = any_store.get_version("funnel", "1")
        assert record is not None
        # the state store holds the record and the digest; the bytes are in the blob store
        assert any_store.open_inline_archive("funnel", "1") is None
        blobs = open_blob_store(blob_url)
        assert blobs.size(record.archive_sha256) == record.archive_bytes
        blobs.close()

        node = enroll_node(hub)
        url = "/v1/models/funnel/versions/1/files/model.onnx"
        whole = hub.http.get(url, headers=node.auth)
        body, size = whole.content, len(whole.content)
        assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
        assert body == b"weights" + b"\0" * 300_000 and "nexus-receipt" in whole.headers
        etag = whole.headers["etag"]

        def get(**headers: str) -> httpx.Response:
            return hub.http.get(url, headers={**node.auth, **headers})

        rest = get(Range="bytes=1000-")
        assert rest.status_code == 206 and rest.content == body[1000:]
        assert rest.headers["content-range"] == f"bytes 1000-{size - 1}/{size}"
        assert get(Range="bytes=3-6").content == body[3:7] and get(Range="bytes=-10").content == body[-10:]
        past = get(Range=f"bytes={size}-")
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        assert "range not satisfiable" in past.json()["error"]
        # ranges this server does not answer, and an If-Range naming other bytes: the whole file
        assert get(Range="bytes=0-1,5-6").status_code == 200
        assert get(Range="lines=1-2").status_code == 200
        assert get(Range="bytes=100-", **{"If-Range": '"another"'}).status_code == 200
        assert get(Range="bytes=100-", **{"If-Range": etag}).content == body[100:]
    finally:
        hub.stop()


def test_archives_an_older_store_holds_inline_are_still_served(any_store: Store, tmp_path: Path) -> None:
    hub = RunningHub(tmp_path / "hub", any_store)
    try:
        hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"old", size=70_000))
        record = any_store.get_version("funnel", "1")
        assert record is not None
        # as a store written before the blob store holds it: inline, and no blob
        blobs = open_blob_store(HubDataDir(hub.data_dir).blobs.as_uri())
        archive = blobs.read(record.archive_sha256)
        assert archive is not None
        inline_archive(any_store, "funnel", "1", archive)
        Path(HubDataDir(hub.data_dir).blobs / "sha256" / record.archive_sha256[:2] / record.archive_sha256).unlink()
        assert blobs.size(record.archive_sha256) is None

        node = enroll_node(hub)
        got = hub.http.get("/v1/models/funnel/versions/1/files/model.onnx", headers=node.auth)
        assert got.status_code == 200 and got.content == b"old" + b"\0" * 70_000
        assert (
            hub.http.get(
                "/v1/models/funnel/versions/1/files/model.onnx", headers={**node.auth, "Range": "bytes=70000-"}
            ).content
            == b"\0" * 3
        )
        # read old, write new: the next push goes to the blob store
        hub.admin.push(make_bundle(tmp_path, "funnel", "2", b"new"))
        new = any_store.get_version("funnel", "2")
        assert new is not None and blobs.size(new.archive_sha256) == new.archive_bytes
        assert any_store.open_inline_archive("funnel", "2") is None
        blobs.close()
    finally:
        hub.stop()


def test_a_redis_store_of_an_older_layout_is_renamed_when_opened(redis_url: str) -> None:
    url = f"{redis_url}?prefix=test:{uuid.uuid4().hex[:8]}:"
    store = open_store(url)
    assert isinstance(store, RedisStore)
    try:
        store.add_node(NodeRecord("n-1", "s1", {"region": "1"}, 1.0))
        store.add_funnel(Funnel("f", ("view", "buy")))
        experiment = Experiment("e", "f", (Variant("a", 1.0), Variant("b", 1.0)), "buy", salt="s")
        assert store.add_experiment(experiment, 1.0)
        running = replace(experiment, status=Status.RUNNING, version=experiment.version + 1)
        assert store.update_experiment(running, 2.0) == "ok"
        store.put_run(RunRecord("r-1", "funnel", "finished", {"rounds": 1}, "1", 1.0, 2.0, 100.0))
        store.put_round("r-1", 1, {"round": 1})
        # back to the names the first layout used
        p = store.p
        for new, old in [
            (f"{p}{{node:n-1}}", f"{p}node:n-1"),
            (f"{p}{{experiments}}", f"{p}experiments"),
            (f"{p}{{experiments}}:running", f"{p}running_experiments"),
            (f"{p}{{experiments}}:history:e", f"{p}experiment_history:e"),
            (f"{p}{{rounds}}:fl_runs", f"{p}fl_runs"),
            (f"{p}{{rounds}}:fl_rounds:r-1", f"{p}fl_rounds:r-1"),
        ]:
            store.r.rename(new, old)
        store.r.hdel(f"{p}meta", "layout")
        store.close()

        store = open_store(url)
        assert isinstance(store, RedisStore)
        node = store.get_node("n-1")
        assert node is not None and node.tags == {"region": "1"}
        record = store.get_experiment("e")
        assert record is not None and record.experiment.status == Status.RUNNING
        assert [r.experiment.version for r in store.experiment_history("e")] == [1, 2]
        blocked = replace(experiment, id="e2")
        assert store.add_experiment(blocked, 3.0)
        started = replace(blocked, status=Status.RUNNING, version=blocked.version + 1)
        assert store.update_experiment(started, 4.0) == "busy"  # the running experiment moved too
        run = store.get_run("r-1")
        assert run is not None and run.status == "finished" and store.list_rounds("r-1") == [{"round": 1}]
        assert not store.r.exists(f"{p}node:n-1", f"{p}experiments", f"{p}running_experiments", f"{p}fl_runs")
        assert store.r.hget(f"{p}meta", "layout") == LAYOUT.encode()
    finally:
        store.delete_all()
        store.close()
