"""Bundle <-> tar archive, the form bundles travel in (push uploads, edge downloads).

Archives are flat (plain files only, no directories or links) and deterministic (sorted
names, zeroed metadata), so one bundle always gives the same archive sha256.

An upload is hostile until checked: a sparse member is a few KB in the archive and any size
once extracted, so sparse members are refused and the extracted total is capped before
anything is written. Stored archives are read member by member through ranged reads
(:func:`locate_member`), so serving one file never holds the whole archive in memory.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

from models.bundle import BundleError
from nexus_wire.names import FILE_NAME, fullmatch

#: more files than any bundle family has; a cap on the work one push may ask for
MAX_MEMBERS = 64
#: what a ranged read of a stored archive returns: ``(offset, length) -> bytes``
ReadRange = Callable[[int, int], bytes]


def pack(bundle_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(Path(bundle_dir).iterdir()):
            if not path.is_file():
                continue
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def unpack(archive: bytes, dest: Path, max_bytes: int | None = None) -> None:
    """Extract a flat archive into ``dest``; anything but top-level regular files is refused,
    as are sparse members and (with ``max_bytes``) more than that many extracted bytes."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = _checked_members(tar, max_bytes)
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as exc:
        raise BundleError(f"not a tar archive ({exc})") from None


def _checked_members(tar: tarfile.TarFile, max_bytes: int | None) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:  # one header at a time: a flood of members stops at the cap
        if len(members) == MAX_MEMBERS:
            raise BundleError(f"bundle archive has more than {MAX_MEMBERS} members (the limit)")
        if not member.isfile() or not fullmatch(FILE_NAME, member.name):
            raise BundleError(f"bundle archive member {member.name[:140]!r} is not a plain top-level file")
        if member.issparse():
            raise BundleError(f"bundle archive member {member.name!r} is a sparse file; sparse members are refused")
        total += member.size
        if max_bytes is not None and total > max_bytes:
            raise BundleError(f"bundle files exceed max_upload_bytes={max_bytes} once extracted")
        members.append(member)
    if not members:
        raise BundleError("bundle archive is empty")
    return members


def locate_member(read: ReadRange, archive_bytes: int, name: str) -> tuple[int, int] | None:
    """``(offset, size)`` of file ``name`` in a stored archive, reading only its tar headers."""
    raw = io.BufferedReader(_RangeReader(read, archive_bytes), buffer_size=16 << 10)
    with tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            if member.name == name:
                return (member.offset_data, member.size) if member.isfile() and not member.issparse() else None
    return None


class _RangeReader(io.RawIOBase):
    """A seekable read-only file over ranged reads (tarfile seeks past member data)."""

    def __init__(self, read: ReadRange, size: int) -> None:
        self._read, self._size, self._pos = read, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        length = min(len(buffer), self._size - self._pos)
        if length <= 0:
            return 0
        data = self._read(self._pos, length)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
