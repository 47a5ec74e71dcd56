"""The default blob store: one file per archive in a folder of the hub's data dir
(``blobs/sha256/<first two hex digits>/<digest>``), 0700 folders and 0600 files like the rest
of it. A blob is written to a private temporary file, flushed to disk and renamed into place,
so a reader sees it complete or not at all; replicas sharing the folder (a volume) write the
same bytes under the same name, and the last rename wins harmlessly."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from hub.blobs.base import ArchiveReader, BlobStore, BlobUnavailable, checked_digest
from nexus_service.keyfiles import private_dir


class _FileReader(ArchiveReader):
    def __init__(self, fh: BinaryIO, where: Path) -> None:
        self.fh, self.where = fh, where

    def read(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self.fh.fileno(), length, offset) if length > 0 else b""
        except OSError as exc:
            raise BlobUnavailable(f"blob {self.where}: {exc}") from None

    def close(self) -> None:
        self.fh.close()


class FileBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.where = str(self.root)

    def _path(self, digest: str) -> Path:
        checked_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def put(self, digest: str, data: bytes) -> None:
        path = self._path(checked_digest(digest, data))
        if path.is_file() and path.stat().st_size == len(data):
            return
        try:
            private_dir(self.root)
            private_dir(path.parent.parent)
            private_dir(path.parent)
            fd, tmp = tempfile.mkstemp(prefix=f".{digest[:16]}-", dir=path.parent)  # 0600
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise BlobUnavailable(f"cannot write blob {digest} under {self.root}: {exc}") from None

    def open(self, digest: str) -> ArchiveReader | None:
        path = self._path(digest)
        try:
            return _FileReader(open(path, "rb"), path)  # the reader closes it
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobUnavailable(f"blob {path}: {exc}") from None

    def size(self, digest: str) -> int | None:
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobUnavailable(f"blob {digest} under {self.root}: {exc}") from None
