"""What every family's predictor is: a verified bundle and the runner of one of its artifacts.

``models.families.load_predictor`` opens a bundle with its family's predictor class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from models.bundle import Bundle
from models.runtime import Runner


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


class LabelledPredictor(BundlePredictor):
    """A predictor of per-label scores with a decision threshold per label (both emotion tiers);
    a subclass sets ``_labels`` and ``_thresholds`` from its manifest before ``__init__``."""

    _labels: list[str]
    _thresholds: np.ndarray

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def thresholds(self) -> np.ndarray:
        """Per-label decision thresholds (float64 [C], in ``labels`` order): positive when score >= threshold."""
        return self._thresholds.copy()

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [B, C] scores of a batch of texts."""
        raise NotImplementedError


class Predictor(Protocol):
    bundle: Bundle
    backend: str

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def __hash__(self) -> int:
        """By identity: the edge caches what it derives from one loaded version."""
        ...

    def predict(self, items: Sequence[Any]) -> np.ndarray:
        """Model outputs for a batch of items (emotion: [B, labels] scores, funnel: [B] P(purchase))."""
        ...
