"""Load a verified bundle as a predictor: featurizer + runner for its model family."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.bundle import Bundle, BundleError, verify_bundle
from models.runtime import Runner, open_runner


class BundlePredictor:
    """What every family's predictor shares: the verified bundle and the runner of its artifact."""

    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        self.bundle = bundle
        self.runner = runner
        self.backend = runner.backend

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version


class Predictor(Protocol):
    bundle: Bundle
    backend: str

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def predict(self, items: Sequence[Any]) -> np.ndarray:
        """Scores for a batch: emotion -> [B, labels] probabilities, funnel -> [B] P(purchase)."""
        ...


def load_predictor(
    bundle_dir: str | os.PathLike[str],
    backend: str = "onnx",
    threads: int = 1,
    public_key: Ed25519PublicKey | None = None,
) -> Predictor:
    bundle = verify_bundle(bundle_dir, public_key)
    family = bundle.manifest.get("family")
    runner = open_runner(bundle, backend, threads)
    if family == "emotion":
        from models.emotion.model import EmotionPredictor

        return EmotionPredictor(bundle, runner)
    if family == "funnel":
        from models.funnel.model import FunnelPredictor

        return FunnelPredictor(bundle, runner)
    raise BundleError(f"{bundle.path}: unknown model family {family!r}")
