"""Bundle <-> tar archive, the form bundles travel in (push uploads, edge downloads).

Archives are flat (plain files only, no directories or links) and deterministic (sorted
names, zeroed metadata), so one bundle always gives the same archive sha256.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from models.bundle import BundleError


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


def unpack(archive: bytes, dest: Path) -> None:
    """Extract a flat archive into ``dest``; anything but top-level regular files is refused."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = tar.getmembers()
            if not members:
                raise BundleError("bundle archive is empty")
            for member in members:
                if not member.isfile() or "/" in member.name or member.name in ("", ".", ".."):
                    raise BundleError(f"bundle archive member {member.name!r} is not a plain top-level file")
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as exc:
        raise BundleError(f"not a tar archive ({exc})") from None


def read_member(archive: bytes, name: str) -> bytes | None:
    """One file of a stored archive (edges download a bundle file by file)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        try:
            member = tar.getmember(name)
        except KeyError:
            return None
        fh = tar.extractfile(member) if member.isfile() else None
        return fh.read() if fh is not None else None
