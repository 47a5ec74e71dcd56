"""A hub running in this process, the bundles and nodes tests give it (no tests here)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from pathlib import Path
from typing import NamedTuple, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.app import create_app
from hub.archive import pack
from hub.blobs import FileBlobStore
from hub.client import OperatorClient
from hub.settings import HubSettings
from hub.store import open_store
from hub.store.base import Store, VersionRecord
from hub.store.redis import RedisStore
from hub.store.sqlite import SqliteStore
from models.bundle import read_manifest, sign_bundle, write_manifest
from nexus_tools.processes import ServerThread
from nexus_wire.datadir import HubDataDir


def make_bundle(
    root: Path, name: str = "funnel", version: str = "1", payload: bytes = b"weights-v1", size: int = 0
) -> Path:
    """A minimal valid bundle dir (the hub never loads the artifacts, only checks them)."""
    folder = root / f"{name}-{version}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(payload + b"\0" * size)
    write_manifest(
        folder,
        {"name": name, "family": "funnel", "version": version, "parent_version": None, "metrics": {"roc_auc": 0.9}},
    )
    return folder


def store_for(kind: str, tmp_path: Path, redis_url: str | None) -> Store:
    if kind == "sqlite":
        return open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    assert redis_url is not None
    return open_store(f"{redis_url}?prefix=test:{uuid.uuid4().hex[:8]}:")


def cleanup(store: Store) -> None:
    if isinstance(store, RedisStore):
        store.delete_all()
    store.close()


class RunningHub:
    """The hub's app under uvicorn in a thread on 127.0.0.1, with an operator and an anonymous client."""

    def __init__(self, data_dir: Path, store: Store, **settings: object) -> None:
        self.data_dir = data_dir
        self.store = store
        self.settings = HubSettings(data_dir=data_dir, **settings)
        self.server = ServerThread(create_app(self.settings, store)).start()
        self.url = self.server.url
        self.admin = OperatorClient(self.url, HubDataDir(data_dir).admin_token.read_text().strip())
        self.http = httpx.Client(base_url=self.url)  # one client: building one per call costs ~50 ms

    def stop(self) -> None:
        self.http.close()
        self.admin.close()
        self.server.stop()


class HubClients(Protocol):
    """What enrolling needs of a hub: an anonymous client on its URL and an operator."""

    http: httpx.Client
    admin: OperatorClient


class EnrolledNode(NamedTuple):
    node_id: str
    auth: dict[str, str]  # the headers of this node's requests


def enroll_node(hub: HubClients, **tags: str) -> EnrolledNode:
    """A node enrolled with a fresh one-time token carrying ``tags``."""
    token = hub.admin.create_token(tags)["token"]
    reply = hub.http.post("/v1/enroll", json={"token": token})
    assert reply.status_code == 201, reply.text
    node = reply.json()
    return EnrolledNode(node["node_id"], {"Authorization": f"Bearer node.{node['node_id']}.{node['node_secret']}"})


def store_forged(
    store: Store, data_dir: Path, tmp_path: Path, version: str, key: Ed25519PrivateKey, flip: bool
) -> None:
    """A bundle the hub's storage (its store, and the blob store in ``data_dir``) holds but did
    not produce (a compromised store or disk)."""
    folder = make_bundle(tmp_path, "funnel", version, b"forged-" + version.encode(), size=1000)
    sign_bundle(folder, key)
    if flip:
        data = bytearray((folder / "model.onnx").read_bytes())
        data[500] ^= 0x01
        (folder / "model.onnx").write_bytes(bytes(data))
    archive = pack(folder)
    signature = json.loads((folder / "signature.json").read_text())
    record = VersionRecord(
        "funnel", version, read_manifest(folder), signature, hashlib.sha256(archive).hexdigest(), len(archive), 0.0
    )
    FileBlobStore(HubDataDir(data_dir).blobs).put(record.archive_sha256, archive)
    assert store.add_version(record)


def inline_archive(store: Store, model: str, version: str, archive: bytes) -> None:
    """Put a version's archive where stores written before the blob store kept it: the SQLite
    ``versions.archive`` column, the Redis ``archive:<model>:<version>`` string."""
    if isinstance(store, RedisStore):
        store.r.set(store._k("archive", model, version), archive)
        return
    assert isinstance(store, SqliteStore)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE versions SET archive = ? WHERE model = ? AND version = ?", (archive, model, version))
