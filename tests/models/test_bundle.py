"""Bundle format: sha256 verification, signatures, atomic install, version ordering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.bundle import (
    BundleError,
    install_bundle,
    list_versions,
    sign_bundle,
    verify_bundle,
    verify_signature,
    write_manifest,
)


def make_bundle(path: Path, version: str = "1") -> Path:
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"\x08\x09fake-onnx" * 10)
    (path / "model.tflite").write_bytes(b"TFL3" * 20)
    write_manifest(path, {"name": "emotion", "family": "emotion", "version": version})
    return path


def test_verify_accepts_intact_bundle_and_lists_every_file(tmp_path: Path) -> None:
    bundle = verify_bundle(make_bundle(tmp_path / "b"))
    assert bundle.name == "emotion" and bundle.version == "1"
    assert set(bundle.manifest["files"]) == {"model.onnx", "model.tflite"}


def test_one_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "b")
    data = bytearray((path / "model.onnx").read_bytes())
    data[3] ^= 0x01
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        verify_bundle(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: (p / "model.tflite").unlink(), "missing"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "manifest.json").write_text("[]"), "JSON object"),
        (lambda p: (p / "model.onnx").write_bytes(b"short"), "bytes"),
    ],
)
def test_malformed_bundles_name_the_problem(tmp_path: Path, mutate, message: str) -> None:
    path = make_bundle(tmp_path / "b")
    mutate(path)
    with pytest.raises(BundleError, match=message):
        verify_bundle(path)


def test_manifest_cannot_point_outside_the_bundle(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="invalid file"):
        verify_bundle(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["files"].update({"model.onnx": "x"}), "must be an object"),
        (lambda m: m["files"]["model.onnx"].update(bytes="80"), "must be an object with 'sha256' and 'bytes'"),
        (lambda m: m.update(name=7), "'name' must be a string"),
        (lambda m: m.update(deep=json.loads("[" * 40 + "]" * 40)), "nests deeper than 32"),
    ],
)
def test_a_malformed_manifest_is_a_bundle_error(tmp_path: Path, change: Any, message: str) -> None:
    path = make_bundle(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        verify_bundle(path)


def test_a_manifest_nested_past_the_parsers_stack_is_a_bundle_error(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "b")
    (path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nests deeper"):
        verify_bundle(path)


def test_signature_covers_manifest_and_so_every_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = make_bundle(tmp_path / "b")
    sign_bundle(path, key)
    verify_bundle(path, key.public_key())
    with pytest.raises(BundleError, match="does not verify"):
        verify_signature(path, Ed25519PrivateKey.generate().public_key())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = "2"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not verify"):
        verify_signature(path, key.public_key())


def test_unsigned_bundle_is_refused_when_a_key_is_pinned(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="unsigned"):
        verify_bundle(path, Ed25519PrivateKey.generate().public_key())


def test_install_is_atomic_and_versions_sort_numerically(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for version in ("2", "10", "1"):
        install_bundle(make_bundle(tmp_path / f"src{version}", version), repo)
    assert list_versions(repo, "emotion") == ["1", "2", "10"]
    assert not [p for p in (repo / "emotion").iterdir() if p.name.startswith(".")]


def test_install_refuses_tampered_source_and_leaves_repository_untouched(tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src")
    (src / "model.onnx").write_bytes(b"\x00" * len((src / "model.onnx").read_bytes()))
    with pytest.raises(BundleError):
        install_bundle(src, tmp_path / "repo")
    assert list_versions(tmp_path / "repo", "emotion") == []
