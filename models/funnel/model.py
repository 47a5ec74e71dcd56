"""Serving-side funnel model: session dicts -> featurizer -> runner -> P(purchase)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from models.bundle import Bundle
from models.funnel.featurizer import Featurizer
from models.runtime import Runner

INPUT = "features"
OUTPUT = "probability"


class FunnelPredictor:
    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        self.bundle = bundle
        self.runner = runner
        self.backend = runner.backend
        self.featurizer = Featurizer.from_spec(bundle.manifest["featurizer"])

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version

    def predict(self, sessions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(purchase) float32 [B]; raises DataError naming the first invalid field."""
        features = self.featurizer.transform(sessions)
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.runner.run({INPUT: features})[OUTPUT][:, 0]
