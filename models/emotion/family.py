"""The emotion family's record in the registry (models/families.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.emotion import NAME, SCORE_NAME, serving
from models.emotion.featurizer import Featurizer
from models.emotion.model import EmotionPredictor
from models.emotion.task import EmotionTask
from models.family import Family, Pipeline, probe_shape
from models.task import Weights


def _pipeline() -> Pipeline:
    from models.emotion import pipeline  # onnx: see Family.pipeline

    return pipeline


def _probe_inputs(manifest: Mapping[str, Any], weights: Weights, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids within the embedding table, and bag weights normalised per text as the featurizer makes them."""
    out: dict[str, np.ndarray] = {}
    for spec in manifest["inputs"]:
        shape = probe_shape(spec["shape"])
        if spec["dtype"] == "int64":
            out[spec["name"]] = rng.integers(0, weights["embedding"].shape[0], size=shape, dtype=np.int64)
        else:
            values = rng.random(shape, dtype=np.float32)
            out[spec["name"]] = values / values.sum(axis=1, keepdims=True)
    return out


EMOTION = Family(
    name=NAME,
    score_name=SCORE_NAME,
    predictor=EmotionPredictor,
    featurizer=Featurizer,
    pipeline=_pipeline,
    serving=serving.SERVING,
    probe_inputs=_probe_inputs,
    task=EmotionTask(),
)
