"""Model repository: ``<root>/<model>/<version>/`` bundles, the newest (or pinned) one served.

Requests never hold a lock: a batch reads the current predictor once and keeps that
object to the end, so swapping in a new version cannot fail a request already running.
A version that fails to verify or load is logged, counted in ``/metrics`` and
remembered, and the previous version keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_worker.batcher import BatchResult
from edge_worker.metrics import Registry
from models.bundle import Bundle, BundleError, list_versions, read_manifest, version_key
from models.errors import NexusError
from models.families import FAMILIES, Families, load_predictor
from models.predictor import Predictor

log = logging.getLogger("nexus.edge.repository")


@dataclass(frozen=True)
class Served:
    name: str
    predictor: Predictor
    loaded_at: float

    @property
    def version(self) -> str:
        return self.predictor.version

    @property
    def manifest(self) -> dict[str, Any]:
        return self.predictor.bundle.manifest


class ModelRepository:
    def __init__(
        self,
        root: Path,
        models: Sequence[str],
        backends: dict[str, str | None],
        pins: dict[str, str | None],
        threads: int,
        metrics: Registry,
        families: Families = FAMILIES,
    ) -> None:
        self.root = Path(root)
        self._families = families
        self.models = tuple(models)
        self._backends = backends
        self._pins = dict(pins)
        self._threads = threads
        self._metrics = metrics
        self._served: dict[str, Served] = {}
        self._failed: dict[tuple[str, str], str] = {}
        # Reloads come from the poll task and the sync agent; one at a time.
        self._reload_lock = threading.Lock()

    def get(self, name: str) -> Served | None:
        return self._served.get(name)

    def ready(self) -> bool:
        return all(name in self._served for name in self.models)

    def versions(self, name: str) -> list[str]:
        return list_versions(self.root, name)

    def failures(self) -> dict[str, str]:
        """``model/version`` -> why it was refused, for versions that failed to load."""
        return {f"{name}/{version}": reason for (name, version), reason in self._failed.items()}

    def reload(self, name: str | None = None, *, retry_failed: bool = False) -> dict[str, str | None]:
        """Serve the newest loadable (or the pinned) version of one or every model.

        Blocking (sha256 + session creation): call it from a thread. The sync agent
        calls it after installing a bundle. Returns model -> version now served.
        """
        with self._reload_lock:
            if retry_failed:
                self._failed.clear()
            if name is not None and name not in self.models:
                raise NexusError(f"model {name!r} is not served by this node ({', '.join(self.models)})")
            targets = (name,) if name else self.models
            for model in targets:
                self._reload_one(model)
            return {model: self._served[model].version if model in self._served else None for model in targets}

    def _candidates(self, name: str) -> list[str]:
        pinned = self._pins.get(name)
        current = self._served.get(name)
        if pinned:
            if current is not None and current.version == pinned:
                return []
            return [pinned] if (self.root / name / pinned).is_dir() else []
        newer = [
            v for v in reversed(self.versions(name)) if current is None or version_key(v) > version_key(current.version)
        ]
        return [v for v in newer if (name, v) not in self._failed]

    def _reload_one(self, name: str) -> None:
        candidates = self._candidates(name)
        if not candidates and name not in self._served:
            pinned = self._pins.get(name)
            log.warning(
                "no loadable %s bundle in %s%s", name, self.root, f" (pinned version {pinned})" if pinned else ""
            )
        # Newest first; at start-up an older version is better than none.
        for version in candidates:
            try:
                predictor = self._load(name, version)
            except NexusError as exc:
                self._refuse(name, version, exc)
                continue
            self._swap(name, predictor)
            return

    def activate(self, name: str, version: str) -> None:
        """Serve exactly ``version`` from now on, older or newer (a hub assignment).

        Blocking; raises NexusError, and keeps the current version, if it cannot load.
        """
        with self._reload_lock:
            if name not in self.models:
                raise NexusError(f"model {name!r} is not served by this node ({', '.join(self.models)})")
            self._pins[name] = version
            current = self._served.get(name)
            if current is not None and current.version == version:
                return
            try:
                predictor = self._load(name, version)
            except NexusError as exc:
                self._refuse(name, version, exc)
                raise
            self._swap(name, predictor)

    def _refuse(self, name: str, version: str, exc: NexusError) -> None:
        self._failed[(name, version)] = str(exc)
        self._metrics.inc("nexus_edge_model_load_failures_total", (("model", name), ("version", version)))
        log.error("refusing %s version %s, keeping %s: %s", name, version, self._current_version(name), exc)

    def _load(self, name: str, version: str) -> Predictor:
        folder = self.root / name / version
        # no backend set: the one the bundle names (the accurate tier ships no fp32 ONNX). The
        # manifest read here only picks an artifact: load_predictor verifies it, and every file's
        # sha256, before opening anything
        backend = self._backends.get(name) or Bundle(folder, read_manifest(folder)).default_backend
        predictor = load_predictor(folder, backend, self._threads, families=self._families)
        manifest = predictor.bundle.manifest
        if manifest.get("family") != name or predictor.version != version:
            raise BundleError(
                f"{self.root / name / version}: bundle says family {manifest.get('family')!r}"
                f" version {predictor.version!r}"
            )
        return predictor

    def _swap(self, name: str, predictor: Predictor) -> None:
        old = self._served.get(name)
        self._served[name] = Served(name, predictor, time.time())
        if old is not None:
            self._metrics.remove("nexus_edge_model_loaded_info", self._info_labels(name, old.predictor))
        self._metrics.set("nexus_edge_model_loaded_info", self._info_labels(name, predictor), 1)
        self._metrics.inc("nexus_edge_model_loads_total", (("model", name),))
        log.info(
            "serving %s version %s (%s)%s",
            name,
            predictor.version,
            predictor.backend,
            f", was {old.version}" if old else "",
        )

    def _current_version(self, name: str) -> str:
        served = self._served.get(name)
        return f"version {served.version}" if served else "nothing"

    @staticmethod
    def _info_labels(name: str, predictor: Predictor) -> tuple[tuple[str, str], ...]:
        return (("model", name), ("version", predictor.version), ("backend", predictor.backend))

    def batch_fn(
        self, name: str, rows: Callable[[np.ndarray, Predictor], list[Any]]
    ) -> Callable[[list[Any]], BatchResult[Any]]:
        """The micro-batcher's function for ``name``: reads the current predictor once per
        batch, predicts, and turns the outputs into one answer row per item with ``rows``."""

        def run(items: list[Any]) -> BatchResult[Any]:
            served = self._served.get(name)
            if served is None:
                raise ModelNotReady(name)
            return BatchResult(rows(served.predictor.predict(items), served.predictor), served)

        return run


class ModelNotReady(NexusError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} is not loaded yet")
        self.model = name
