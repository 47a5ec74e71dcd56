"""What every family's training pipeline shares: version choice, staged install, provenance."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.bundle import list_versions

#: the committed default version; retraining into the default repository replaces it
DEFAULT_VERSION = "1"


def git_revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision else None


def target_version(out: Path, name: str, default_repository: Path) -> str:
    """The committed default is replaced in place (git keeps one copy); elsewhere versions count up."""
    if Path(out).resolve() == default_repository.resolve():
        return DEFAULT_VERSION
    numbered = [int(v) for v in list_versions(out, name) if v.isdigit()]
    return str(max(numbered) + 1) if numbered else "1"


@contextmanager
def staged_bundle(out: Path, name: str, version: str) -> Iterator[Path]:
    """Yield a hidden staging folder; on success rename it to ``out/name/version`` atomically.

    Readers scanning the repository skip hidden folders, so they never see a half-built
    bundle; on failure the staging folder is removed and any older copy stays.
    """
    parent = Path(out) / name
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging.", dir=parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is served to other users
    try:
        yield staging
        target = parent / version
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{version}.old.", dir=parent))
            os.replace(target, old / version)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def manifest_header(name: str, version: str, parent_version: str | None = None) -> dict[str, Any]:
    """The identity part of a manifest; each family adds its tensors, spec and metrics."""
    return {
        "name": name,
        "family": name,
        "version": version,
        "parent_version": parent_version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
