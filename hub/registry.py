"""Model registry and rollout: push, list, show, promote, assign, rollback, and the
assignment each node receives.

Versions: the hub is the authority. A pushed bundle keeps its manifest version when
that version is free. The same bundle pushed again (equal manifest but for the version)
returns the existing version, so pushes are idempotent. A different bundle under a taken
version gets the next free number, and the hub rewrites the manifest's ``version``
before signing (the signature covers the rewritten manifest, so edges see one
consistent bundle).

Archives go to the blob store (hub/blobs/) under their sha256 before the record naming them is
written; the state store holds records only. An archive a store written before the blob store
holds inline is read from there (read old, write new).

Rollout is an append-only log per model (``RolloutAction``): ``stable`` actions set the
default version, ``assign`` actions (``promote --stage canary`` is an assign to every
node) send a version to nodes matching a tag selector and a hash-bucket percentage.
``rollback`` deactivates the newest active action, so it undoes whatever was done last.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub import promotion_gate
from hub.archive import locate_member, pack, unpack
from hub.blobs.base import ArchiveReader, BlobStore
from hub.store.base import NodeRecord, RolloutAction, Store, VersionRecord
from models.bundle import BundleError, read_manifest, sign_bundle, verify_bundle, version_key, write_manifest
from models.errors import NexusError
from nexus_wire.names import MODEL_NAME, VERSION, anchored, fullmatch

DEFAULT_CANARY_PERCENT = 10
#: bytes per ranged read of a download: what one response holds in memory at a time
FILE_CHUNK = 1 << 20
Stage = Literal["canary", "stable"]


class NotFound(NexusError):
    """An unknown model or version."""


class Conflict(NexusError):
    """The request is valid but the registry's state does not allow it."""


@dataclass(frozen=True)
class Assignment:
    model: str
    version: str
    archive_sha256: str
    archive_bytes: int


@dataclass(frozen=True)
class BundleFile:
    """Where one bundle file lies in its version's stored archive, and a reader open on it."""

    model: str
    version: str
    offset: int
    size: int
    reader: ArchiveReader
    #: what names this file's bytes for ``If-Range`` (its archive's digest and its name)
    etag: str = ""


def bucket(node_id: str, model: str) -> int:
    """A node's stable 0..99 bucket for ``model``: canary percentages select bucket < percent."""
    return int.from_bytes(hashlib.sha256(f"{model}\0{node_id}".encode()).digest()[:8], "big") % 100


class Registry:
    def __init__(
        self, store: Store, key: Ed25519PrivateKey, blobs: BlobStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.key = key
        self.blobs = blobs
        self.clock = clock

    # -- push ---------------------------------------------------------------------------
    def push(self, archive: bytes, max_bytes: int | None = None) -> tuple[VersionRecord, bool]:
        """Verify, version, sign and store an uploaded bundle archive; ``(record, created)``.
        ``max_bytes`` caps the bundle's files once extracted (an upload's limit)."""
        with tempfile.TemporaryDirectory(prefix="nexus-push-") as tmp:
            bundle_dir = Path(tmp) / "bundle"
            bundle_dir.mkdir()
            unpack(archive, bundle_dir, max_bytes)
            manifest = verify_bundle(bundle_dir).manifest
            name = manifest["name"]
            if not fullmatch(MODEL_NAME, name):
                raise BundleError(f"model name {name!r} must match {anchored(MODEL_NAME)}")
            if not fullmatch(VERSION, manifest["version"]):
                raise BundleError(f"version {manifest['version']!r} must be a decimal integer string")
            for record in self.store.list_versions(name):
                if _same_bundle(record.manifest, manifest):
                    return record, False
            version = manifest["version"]
            # Two replicas racing for a number: the store's insert-if-absent picks one winner.
            while True:
                taken = {r.version for r in self.store.list_versions(name)}
                if version in taken:
                    version = str(max(int(v) for v in taken if v.isdigit()) + 1)
                stored = self._sign_and_store(bundle_dir, manifest, version)
                if stored is not None:
                    return stored, True

    def _sign_and_store(self, bundle_dir: Path, manifest: dict[str, Any], version: str) -> VersionRecord | None:
        if manifest["version"] != version:
            body = {k: v for k, v in manifest.items() if k not in ("files", "format")}
            manifest = write_manifest(bundle_dir, {**body, "version": version})
        signature = sign_bundle(bundle_dir, self.key)
        data = pack(bundle_dir)
        record = VersionRecord(
            model=manifest["name"],
            version=version,
            manifest=read_manifest(bundle_dir),
            signature=signature,
            archive_sha256=hashlib.sha256(data).hexdigest(),
            archive_bytes=len(data),
            pushed_at=self.clock(),
        )
        # the bytes first: a record is only visible once its archive is downloadable
        self.blobs.put(record.archive_sha256, data)
        return record if self.store.add_version(record) else None

    # -- queries ------------------------------------------------------------------------
    def version(self, model: str, version: str) -> VersionRecord:
        record = self.store.get_version(model, version)
        if record is None:
            if not self.store.list_versions(model):
                raise NotFound(f"unknown model {model!r}")
            raise NotFound(f"model {model!r} has no version {version!r}")
        return record

    def versions(self, model: str) -> list[VersionRecord]:
        records = self.store.list_versions(model)
        if not records:
            raise NotFound(f"unknown model {model!r}")
        return records

    def bundle_file(self, model: str, version: str, name: str) -> BundleFile:
        """Find a file of a stored bundle by reading its archive's headers, never the whole
        archive; the caller streams it with :meth:`file_chunks`, which closes the reader."""
        record = self.version(model, version)  # raises, naming what is unknown
        reader = self.open_archive(record)
        try:
            where = locate_member(reader.read, record.archive_bytes, name)
        except BaseException:
            reader.close()
            raise
        if where is None:
            reader.close()
            raise NotFound(f"bundle {model} {version} has no file {name!r}")
        return BundleFile(model, version, *where, reader, etag=f'"{record.archive_sha256[:32]}-{name}"')

    def open_archive(self, record: VersionRecord) -> ArchiveReader:
        """A reader of a version's archive: from the blob store, or inline in an older store."""
        reader = self.blobs.open(record.archive_sha256) or self.store.open_inline_archive(record.model, record.version)
        if reader is None:
            raise NotFound(f"no archive for {record.model} {record.version}")
        return reader

    def read_archive(self, model: str, version: str) -> bytes:
        """A whole archive (the base bundle of a federated run)."""
        record = self.version(model, version)
        with self.open_archive(record) as reader:
            data = b"".join(reader.chunks(0, record.archive_bytes, FILE_CHUNK))
        if hashlib.sha256(data).hexdigest() != record.archive_sha256:
            raise NotFound(f"archive of {model} {version} does not match its digest")
        return data

    def file_chunks(self, file: BundleFile, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive; default: all) of the file, streamed from the
        blob store :data:`FILE_CHUNK` at a time as the response asks for them."""
        end = file.size if end is None else end
        want = end - start
        try:
            got = 0
            for data in file.reader.chunks(file.offset + start, want, FILE_CHUNK):
                got += len(data)
                yield data
            if got != want:
                raise NotFound(f"archive of {file.model} {file.version} is shorter than its headers say")
        finally:
            file.reader.close()

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for model in self.store.list_models():
            records = self.store.list_versions(model)
            actions = [a for a in self.store.list_actions(model) if a.active]
            out.append(
                {
                    "model": model,
                    "versions": [r.version for r in records],
                    "latest": records[-1].version if records else None,
                    "stable": _stable(actions),
                    "canary": sorted({a.version for a in actions if a.kind == "assign"}, key=version_key),
                }
            )
        return out

    def show(self, model: str) -> dict[str, Any]:
        records = self.versions(model)
        history = self.store.list_actions(model)
        active = [a for a in history if a.active]
        stable = _stable(active)
        assigned = {a.version for a in active if a.kind == "assign"}
        ever = {a.version for a in history}

        def stage(version: str) -> str:
            if version == stable:
                return "stable"
            if version in assigned:
                return "canary"
            return "retired" if version in ever else "candidate"

        return {
            "model": model,
            "stable": stable,
            "versions": [
                {
                    "version": r.version,
                    "stage": stage(r.version),
                    "pushed_at": r.pushed_at,
                    "archive_sha256": r.archive_sha256,
                    "archive_bytes": r.archive_bytes,
                    "parent_version": r.manifest.get("parent_version"),
                    "metrics": r.manifest.get("metrics", {}),
                    "provenance": r.manifest.get("provenance", {}),
                    # a federated candidate against the stable version it started from (hub/promotion_gate.py)
                    "gate": promotion_gate.gate_of(r.manifest),
                    "key_id": r.signature.get("key_id"),
                }
                for r in records
            ],
            "rollout": [_action_dict(a) for a in history],
        }

    # -- rollout ------------------------------------------------------------------------
    def promote(
        self, model: str, version: str, stage: Stage, percent: int | None = None, force: bool = False
    ) -> RolloutAction:
        """Make ``version`` stable or canary; a federated candidate the promotion gate found worse than
        the version it would replace is refused (:class:`Conflict`) unless ``force`` (hub/promotion_gate.py)."""
        record = self.version(model, version)
        refused = promotion_gate.refusal(model, version, promotion_gate.gate_of(record.manifest))
        if refused is not None and not force:
            raise Conflict(refused)
        if stage == "stable":
            return self.store.add_action(model, "stable", version, {}, 100, self.clock())
        return self.assign(model, version, {}, DEFAULT_CANARY_PERCENT if percent is None else percent)

    def gate(self, model: str, version: str) -> dict[str, Any] | None:
        """The promotion gate's verdict on ``version``: None for a version no federated run made."""
        return promotion_gate.gate_of(self.version(model, version).manifest)

    def assign(self, model: str, version: str, selector: dict[str, str], percent: int = 100) -> RolloutAction:
        self.version(model, version)
        if not 0 < percent <= 100:
            raise NexusError(f"percent must be in 1..100, got {percent}")
        return self.store.add_action(model, "assign", version, dict(selector), percent, self.clock())

    def rollback(self, model: str) -> RolloutAction:
        self.versions(model)
        for action in reversed(self.store.list_actions(model)):
            if action.active and self.store.deactivate_action(model, action.action_id):
                return action
        raise Conflict(f"model {model!r} has no rollout to roll back")

    def assignments_for(self, node: NodeRecord) -> dict[str, Assignment]:
        out: dict[str, Assignment] = {}
        for model in self.store.list_models():
            version = resolve(node, model, [a for a in self.store.list_actions(model) if a.active])
            record = self.store.get_version(model, version) if version else None
            if record is not None:
                out[model] = Assignment(model, record.version, record.archive_sha256, record.archive_bytes)
        return out


def resolve(node: NodeRecord, model: str, active: list[RolloutAction]) -> str | None:
    """The newest matching assign rule wins; otherwise the stable version; otherwise none."""
    for action in reversed(active):
        if action.kind != "assign":
            continue
        if (
            all(node.tags.get(k) == v for k, v in action.selector.items())
            and bucket(node.node_id, model) < action.percent
        ):
            return action.version
    return _stable(active)


def _same_bundle(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal but for the version number (which the hub may have rewritten)."""
    return {k: v for k, v in a.items() if k != "version"} == {k: v for k, v in b.items() if k != "version"}


def _stable(active: list[RolloutAction]) -> str | None:
    stables = [a.version for a in active if a.kind == "stable"]
    return stables[-1] if stables else None


def _action_dict(action: RolloutAction) -> dict[str, Any]:
    return {
        "id": action.action_id,
        "kind": action.kind,
        "version": action.version,
        "selector": action.selector,
        "percent": action.percent,
        "created_at": action.created_at,
        "active": action.active,
    }
