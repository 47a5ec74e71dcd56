"""Serving-side funnel model: session dicts -> featurizer -> runner -> P(purchase)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import Bundle, BundleError, verify_bundle
from models.errors import NexusError
from models.funnel.featurizer import Featurizer
from models.predictor import BundlePredictor
from models.runtime import Runner, open_runner

INPUT = "features"
OUTPUT = "probability"


class FunnelPredictor(BundlePredictor):
    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        try:
            self.featurizer = Featurizer.from_spec(bundle.manifest["featurizer"])
        except NexusError as exc:
            raise BundleError(f"{bundle.path}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{bundle.path}: funnel manifest lacks or garbles its featurizer spec ({exc!r})"
            ) from None
        super().__init__(bundle, runner)

    def predict(self, sessions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(purchase) float32 [B]; raises DataError naming the first invalid field."""
        features = self.featurizer.transform(sessions)
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.runner.run({INPUT: features})[OUTPUT][:, 0]


def load(bundle_dir: Path, backend: str = "onnx") -> FunnelPredictor:
    """A verified funnel bundle served by one of its artifacts (the pipeline's own measurements)."""
    bundle = verify_bundle(bundle_dir)
    return FunnelPredictor(bundle, open_runner(bundle, backend))
