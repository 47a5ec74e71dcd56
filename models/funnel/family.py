"""The funnel family's record in the registry (models/families.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.family import Family, Pipeline, probe_shape
from models.funnel import NAME, SCORE_NAME, serving
from models.funnel.featurizer import Featurizer
from models.funnel.model import FunnelPredictor
from models.funnel.task import FunnelTask
from models.task import Weights


def _pipeline() -> Pipeline:
    from models.funnel import pipeline  # onnx: see Family.pipeline

    return pipeline


def _probe_inputs(manifest: Mapping[str, Any], weights: Weights, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal features, as the featurizer's standardisation makes them."""
    return {
        spec["name"]: rng.standard_normal(probe_shape(spec["shape"]), dtype=np.float32) for spec in manifest["inputs"]
    }


FUNNEL = Family(
    name=NAME,
    score_name=SCORE_NAME,
    predictor=FunnelPredictor,
    featurizer=Featurizer.from_spec,
    pipeline=_pipeline,
    serving=serving.SERVING,
    probe_inputs=_probe_inputs,
    task=FunnelTask(),
)
