"""Model bundles: a folder ``<model>/<version>/`` with artifacts, ``manifest.json`` and
an optional detached signature.

The manifest lists the sha256 of every artifact, so signing the manifest's exact bytes
covers the whole bundle. Nothing is loaded from a bundle before :func:`verify_bundle`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.errors import NexusError
from nexus_wire.heads import key_id
from nexus_wire.names import MODEL_NAME, VERSION, fullmatch

FORMAT = "nexus-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
#: backend name -> artifact file name inside a bundle
ARTIFACTS = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "tflite": "model.tflite"}
BACKENDS = tuple(ARTIFACTS)
#: a manifest without ``tier`` is the fast tier (every bundle written before the accurate tier existed)
DEFAULT_TIER = "fast"
#: the committed default bundles: models/bundles/<family>/<version>/
DEFAULT_REPOSITORY = Path(__file__).resolve().parent / "bundles"
_CHUNK = 1 << 20
#: manifests are a few levels deep; a deeper one is refused before anything walks it
MAX_MANIFEST_DEPTH = 32


class BundleError(NexusError):
    """A bundle is missing, malformed, tampered with or wrongly signed."""


def in_package(repository: Path) -> bool:
    """Whether ``repository`` is (or lies inside) the shipped bundles: read-only for a running
    node, since every edge on the host (and an installed package's site-packages) shares them."""
    resolved = Path(repository).resolve()
    return resolved == DEFAULT_REPOSITORY or resolved.is_relative_to(DEFAULT_REPOSITORY)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def tier(self) -> str:
        """The manifest's ``tier`` (emotion: ``fast`` or ``accurate``); bundles written before tiers are fast."""
        tier = self.manifest.get("tier", DEFAULT_TIER)
        return tier if isinstance(tier, str) else DEFAULT_TIER

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends whose artifact this bundle lists (a bundle may ship a subset of ``BACKENDS``)."""
        files = self.manifest.get("files", {})
        return tuple(backend for backend, name in ARTIFACTS.items() if name in files)

    @property
    def default_backend(self) -> str:
        """The manifest's ``default_backend``, else ONNX fp32 (what every bundle before subsets shipped)."""
        default = self.manifest.get("default_backend")
        return default if isinstance(default, str) and default in self.backends else "onnx"

    def artifact(self, backend: str) -> Path:
        if backend not in ARTIFACTS:
            raise BundleError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if backend not in self.backends:
            why = self.manifest.get("missing_backends", {})
            reason = f": {why[backend]}" if isinstance(why, dict) and isinstance(why.get(backend), str) else ""
            raise BundleError(
                f"{self.name} version {self.version} has no {backend} artifact"
                f" (it ships {', '.join(self.backends) or 'none'}){reason}"
            )
        return self.path / ARTIFACTS[backend]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def version_key(version: str) -> tuple[int, str]:
    """Order versions numerically where they are integers (Triton's convention)."""
    return (int(version), "") if version.isdigit() else (-1, version)


def _depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests, counting no further than ``limit + 1`` (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= limit:
                stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:  # nested past the parser's stack, far deeper than any real manifest
        raise BundleError(f"{path}: manifest nests deeper than {MAX_MANIFEST_DEPTH} levels") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    for key in ("format", "name", "version", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest lacks {key!r}")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{path}: unsupported format {manifest['format']!r} (expected {FORMAT})")
    if _depth(manifest, MAX_MANIFEST_DEPTH) > MAX_MANIFEST_DEPTH:
        raise BundleError(f"{path}: manifest nests deeper than {MAX_MANIFEST_DEPTH} levels")
    for key in ("name", "version"):
        if not isinstance(manifest[key], str):
            raise BundleError(f"{path}: manifest {key!r} must be a string")
    if not isinstance(manifest["files"], dict) or not manifest["files"]:
        raise BundleError(f"{path}: manifest 'files' must name at least one file")
    for name, entry in manifest["files"].items():
        if not (isinstance(entry, dict) and type(entry.get("bytes")) is int and isinstance(entry.get("sha256"), str)):
            raise BundleError(f"{path}: manifest 'files' entry {name!r} must be an object with 'sha256' and 'bytes'")
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike[str], public_key: Ed25519PublicKey | None = None) -> Bundle:
    """Check every listed file's size and sha256 (and the signature when a key is given)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for name, entry in manifest["files"].items():
        if "/" in name or name in ("", ".", "..", MANIFEST, SIGNATURE):
            raise BundleError(f"{bundle_dir}: manifest names an invalid file {name!r}")
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: {name} is missing")
        if path.stat().st_size != entry.get("bytes"):
            raise BundleError(
                f"{bundle_dir}: {name} has {path.stat().st_size} bytes, manifest says {entry.get('bytes')}"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise BundleError(f"{bundle_dir}: {name} sha256 mismatch (corrupt or tampered)")
    if public_key is not None:
        verify_signature(bundle_dir, public_key)
    return Bundle(bundle_dir, manifest)


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill in ``files`` (sha256 and size of every artifact in the folder) and write it."""
    bundle_dir = Path(bundle_dir)
    files = {}
    for path in sorted(bundle_dir.iterdir()):
        if path.is_file() and path.name not in (MANIFEST, SIGNATURE):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"format": FORMAT, **manifest, "files": files}
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def sign_bundle(bundle_dir: Path, private_key: Ed25519PrivateKey) -> dict[str, str]:
    manifest_bytes = (Path(bundle_dir) / MANIFEST).read_bytes()
    signature = {
        "alg": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }
    (Path(bundle_dir) / SIGNATURE).write_text(json.dumps(signature, indent=2) + "\n")
    return signature


def verify_signature(bundle_dir: Path, public_key: Ed25519PublicKey) -> None:
    bundle_dir = Path(bundle_dir)
    try:
        signature = json.loads((bundle_dir / SIGNATURE).read_text())
        raw = base64.b64decode(signature["signature"], validate=True)
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: unsigned bundle (no {SIGNATURE})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{bundle_dir}: malformed {SIGNATURE} ({exc})") from None
    try:
        public_key.verify(raw, (bundle_dir / MANIFEST).read_bytes())
    except InvalidSignature:
        raise BundleError(f"{bundle_dir}: signature does not verify against the pinned key") from None


def install_bundle(src: Path, repository: Path, public_key: Ed25519PublicKey | None = None) -> Bundle:
    """Verify ``src`` and move it into ``repository/<name>/<version>`` atomically.

    The bundle is copied to a temporary sibling first and renamed into place, so a
    reader scanning the repository never sees a half-written version.
    """
    if in_package(repository):
        raise BundleError(f"refused to install {src} into the shipped bundles {DEFAULT_REPOSITORY}")
    bundle = verify_bundle(src, public_key)
    if not (fullmatch(MODEL_NAME, bundle.name) and fullmatch(VERSION, bundle.version)):
        raise BundleError(f"{src}: manifest name and version must match {MODEL_NAME} and {VERSION}")
    target = Path(repository) / bundle.name / bundle.version
    # a second fence after the patterns: nothing is written outside the repository
    if not target.resolve().is_relative_to(Path(repository).resolve()):
        raise BundleError(f"{src}: {target} is not inside the repository {repository}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        verify_bundle(target, public_key)
        return Bundle(target, bundle.manifest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.version}.", dir=target.parent))
    try:
        for item in Path(src).iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return verify_bundle(target, public_key)


def list_versions(repository: Path, name: str) -> list[str]:
    """Versions of ``name`` in a model repository, oldest first (hidden temp dirs skipped)."""
    folder = Path(repository) / name
    if not folder.is_dir():
        return []
    versions = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(versions, key=version_key)


def newest_bundle(repository: Path, name: str) -> Path:
    """The folder of the newest version of ``name`` in a model repository."""
    versions = list_versions(repository, name)
    if not versions:
        raise NexusError(f"no {name} bundle in {repository}; run 'nexus models train {name}'")
    return Path(repository) / name / versions[-1]
