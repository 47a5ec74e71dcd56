"""Serving side of the emotion family: texts -> featurizer -> exported artifact -> scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.bundle import Bundle, BundleError, verify_bundle
from models.emotion.featurizer import Featurizer
from models.errors import NexusError
from models.predictor import LabelledPredictor
from models.runtime import Runner, open_runner


class EmotionPredictor(LabelledPredictor):
    """Scores [B, labels] for a batch of texts; ``thresholds`` turn them into label sets."""

    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        manifest = bundle.manifest
        try:
            self.featurizer = Featurizer(manifest["featurizer"])
            self._labels = [str(name) for name in manifest["labels"]]
            self._thresholds = np.array([float(manifest["thresholds"][name]) for name in self._labels])
        except NexusError as exc:
            raise BundleError(f"{bundle.path}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{bundle.path}: emotion manifest lacks or garbles labels/thresholds/featurizer ({exc!r})"
            ) from None
        super().__init__(bundle, runner)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [B, C] sigmoid scores; the batch is padded to one power-of-two length."""
        if not texts:
            return np.zeros((0, len(self._labels)), np.float32)
        ids, weights = self.featurizer.batch(texts)
        return self.runner.run({"ids": ids, "weights": weights})["scores"]


def load(bundle_dir: Path, backend: str = "onnx") -> EmotionPredictor:
    """A verified emotion bundle served by one of its artifacts (the pipeline's own measurements)."""
    bundle = verify_bundle(bundle_dir)
    return EmotionPredictor(bundle, open_runner(bundle, backend))
