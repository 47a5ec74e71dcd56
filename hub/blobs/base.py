"""Where bundle archives live: a content-addressed blob store, one interface with a filesystem
implementation (the default, in the hub's data dir) and an S3-compatible one (replicas).

The state store keeps each version's metadata and the archive's sha256 and size
(``VersionRecord``); the bytes are here, under that digest. A blob is written once, complete,
before any record names it (a crash leaves at most an unnamed blob, never a record whose bytes
are missing), and never changes: the same archive pushed twice is one blob. Reads are ranged,
so a download streams a bundle file (or the part an edge is missing) without holding the
archive in memory.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

from models.errors import NexusError
from nexus_wire.names import fullmatch
from nexus_wire.signed_assignments import DIGEST


class BlobUnavailable(NexusError):
    """The blob store cannot be reached or answered an error (the HTTP layer answers 503)."""


class ArchiveReader(ABC):
    """Ranged reads of one stored archive; close it when done (a context manager)."""

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end)."""

    def chunks(self, offset: int, length: int, chunk: int) -> Iterator[bytes]:
        """``length`` bytes from ``offset``, ``chunk`` at a time (fewer only past the end). A store
        that pays a request per read (S3) streams the whole span from one request instead."""
        end = offset + length
        for start in range(offset, end, chunk):
            data = self.read(start, min(chunk, end - start))
            if not data:
                return
            yield data

    def close(self) -> None:
        return None

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobStore(ABC):
    """Archives by sha256 (lower-case hex): written once, read in ranges."""

    #: for messages: the folder or bucket
    where: str = ""

    @abstractmethod
    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` under its ``digest`` (checked); nothing happens when it is there already."""

    @abstractmethod
    def open(self, digest: str) -> ArchiveReader | None:
        """A reader of the blob, ``None`` when there is none."""

    @abstractmethod
    def size(self, digest: str) -> int | None:
        """The blob's length, ``None`` when there is none."""

    def read(self, digest: str) -> bytes | None:
        """The whole blob (the base bundle of a federated run; small reads only)."""
        size = self.size(digest)
        reader = self.open(digest) if size is not None else None
        if reader is None or size is None:
            return None
        with reader:
            return b"".join(reader.chunks(0, size, 1 << 20))

    def close(self) -> None:
        return None


def checked_digest(digest: str, data: bytes | None = None) -> str:
    """``digest`` when it is a sha256 in hex (and, given ``data``, that of ``data``): the
    only names a blob store builds paths and keys from."""
    if not fullmatch(DIGEST, digest):
        raise BlobUnavailable(f"not a sha256 digest: {digest[:80]!r}")
    if data is not None and hashlib.sha256(data).hexdigest() != digest:
        raise BlobUnavailable(f"blob is not {digest}: its bytes hash to another digest")
    return digest
