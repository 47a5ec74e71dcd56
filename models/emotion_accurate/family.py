"""The accurate emotion tier's record in the registry (models/families.py).

It serves on the emotion family's own routes (/v1/emotion, /v1/feedback): the same texts
in, the same labels out, so a client switches tier with ``?model=`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models.emotion import serving
from models.emotion_accurate import NAME, SCORE_NAME
from models.emotion_accurate.model import AccuratePredictor
from models.emotion_accurate.task import AccurateTask
from models.emotion_accurate.tokens import TokenSpec
from models.family import Family, Pipeline, probe_shape
from models.task import Weights

#: all-MiniLM-L6-v2's WordPiece vocabulary (bert-base-uncased's); a manifest's ``architecture`` may say otherwise
VOCAB_SIZE = 30522
#: [CLS] and [SEP] in that vocabulary; ids below FIRST_WORD are [PAD], [unusedN] and the other specials
CLS, SEP, FIRST_WORD = 101, 102, 999


def _pipeline() -> Pipeline:
    from models.emotion_accurate import pipeline  # torch and onnx: see Family.pipeline

    return pipeline


def _probe_inputs(manifest: Mapping[str, Any], weights: Weights, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token sequences as the tokenizer makes them ([CLS] words [SEP]), every position attended."""
    vocab = int(manifest.get("architecture", {}).get("vocab_size", VOCAB_SIZE))
    out: dict[str, np.ndarray] = {}
    for spec in manifest["inputs"]:
        shape = probe_shape(spec["shape"])
        if spec["name"] == "attention_mask":
            out[spec["name"]] = np.ones(shape, np.int64)
        else:
            ids = rng.integers(FIRST_WORD, vocab, size=shape, dtype=np.int64)
            ids[:, 0], ids[:, -1] = CLS, SEP
            out[spec["name"]] = ids
    return out


EMOTION_ACCURATE = Family(
    name=NAME,
    score_name=SCORE_NAME,
    predictor=AccuratePredictor,
    featurizer=TokenSpec.from_dict,
    pipeline=_pipeline,
    serving=serving.SERVING,
    probe_inputs=_probe_inputs,
    task=AccurateTask(),
)
