"""Private key, secret and state files of a data dir: 0600 from the first byte.

A key or secret is created once, on first use: the content goes to a private temp file that
is then hard-linked into place, so of two processes starting at once (hub replicas, an
edge's workers) the loser finds the winner's complete file and both go on with the same
content. A private JSON file is rewritten whole (temp file + rename), so a reader sees the
old or the new version, never half of one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.errors import NexusError


class KeyFileError(NexusError):
    """A key file is missing, unreadable or holds no Ed25519 key."""


def _private_temp(path: Path, data: bytes) -> str:
    """``data`` in a new 0600 file beside ``path`` (mkstemp opens it with O_EXCL), synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The file's bytes; when it is absent, first create it with ``make()``."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    tmp = _private_temp(path, make())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race: its file is complete, and ours goes
    finally:
        os.unlink(tmp)
    return path.read_bytes()


#: what a server that keeps private data runs under: nothing it creates is readable by others
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (0700): made so, or narrowed if it was wider."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask and ignored for an existing folder
    return path


def private_file(path: Path) -> Path:
    """``path`` exists and is 0600 (created empty when absent). Called before SQLite opens a
    database: SQLite gives the -wal, -shm and -journal files the mode of the database file."""
    path = Path(path)
    # O_EXCL: never open an existing database here, since closing any descriptor of a file
    # drops every POSIX lock this process holds on it (SQLite's locks included)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(path, 0o600)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) in one step: a reader sees the old file or the new one."""
    path = Path(path)
    tmp = _private_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_json(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON (keys sorted) in one step."""
    write_private(path, json.dumps(obj, sort_keys=True).encode())


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def load_or_create_token(path: Path, make: Callable[[], str] = new_token) -> str:
    """A bearer token kept in ``path``, created with ``make()`` on first use; never logged."""
    return read_or_create(path, lambda: make().encode()).decode().strip()


def _private_key(data: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise KeyFileError(f"cannot read the signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def _new_private_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key (PKCS8 PEM) in ``path``, generated on first use."""
    return _private_key(read_or_create(path, _new_private_key), path)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in an existing PEM file (one another process created)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the signing key {path}: {exc}") from None
    return _private_key(data, path)


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key in base64: how keys travel in JSON (``/v1/hub``, audit entries)."""
    return base64.b64encode(key.public_bytes_raw()).decode()


def public_key_from_b64(text: str | bytes) -> Ed25519PublicKey:
    """The inverse of :func:`public_key_b64`; ValueError when it is not one."""
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public half of a PEM private key file, or a PEM / raw-base64 public key file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path} ({exc.strerror})") from None
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        elif b"PUBLIC KEY" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = public_key_from_b64(data.strip())
    except ValueError as exc:
        raise KeyFileError(f"{path} is not an Ed25519 key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key
