"""Key, secret and private JSON files: 0600, and processes racing to create one agree on it."""

from __future__ import annotations

import json
import multiprocessing
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nexus_service.keyfiles import (
    KeyFileError,
    load_or_create_key,
    load_or_create_token,
    load_public_key,
    load_signing_key,
    public_key_b64,
    public_key_from_b64,
    read_or_create,
    write_private_json,
)

RACERS = 8


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _race_key(args: tuple[str, Any]) -> str:
    path, barrier = args
    barrier.wait()
    return public_key_b64(load_or_create_key(Path(path)).public_key())


def _race_token(args: tuple[str, Any]) -> str:
    path, barrier = args
    barrier.wait()
    return load_or_create_token(Path(path))


@pytest.mark.parametrize("race", [_race_key, _race_token])
def test_processes_racing_to_create_a_file_all_end_with_its_content(
    tmp_path: Path, race: Callable[[tuple[str, Any]], str]
) -> None:
    path = tmp_path / "data" / "secret"
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(RACERS)
        with ctx.Pool(RACERS) as pool:
            seen = pool.map(race, [(str(path), barrier)] * RACERS)
    assert len(set(seen)) == 1
    assert _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temp file left behind


def test_an_existing_file_is_read_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "token"
    assert load_or_create_token(path, lambda: "nx_first") == "nx_first"
    assert load_or_create_token(path, lambda: "nx_second") == "nx_first"
    assert read_or_create(path, lambda: b"other") == b"nx_first"


def test_private_json_is_replaced_whole_and_stays_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.json"
    write_private_json(path, {"b": 1, "a": [1, 2]})
    write_private_json(path, {"b": 2})
    assert path.read_text() == '{"b": 2}' and json.loads(path.read_text()) == {"b": 2}
    assert _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_public_keys_load_from_every_file_form(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "key.pem")
    assert _mode(tmp_path / "key.pem") == 0o600
    raw = public_key_b64(key.public_key())
    assert public_key_b64(load_signing_key(tmp_path / "key.pem").public_key()) == raw
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "pub.b64").write_text(raw + "\n")
    for name in ("key.pem", "pub.pem", "pub.b64"):
        assert public_key_b64(load_public_key(tmp_path / name)) == raw
    assert public_key_b64(public_key_from_b64(raw)) == raw


def test_bad_key_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(KeyFileError, match="is not an Ed25519 key"):
        load_public_key(tmp_path / "junk")
    with pytest.raises(KeyFileError, match="cannot read key"):
        load_public_key(tmp_path / "absent")
    with pytest.raises(KeyFileError, match="cannot read the signing key"):
        load_signing_key(tmp_path / "absent")
    with pytest.raises(KeyFileError, match="cannot read the signing key"):
        load_or_create_key(tmp_path / "junk")
    with pytest.raises(ValueError):
        public_key_from_b64(public_key_b64(Ed25519PrivateKey.generate().public_key())[:-4])
