"""How the edge serves the emotion family: texts in, label scores out (/v1/emotion and OIP v2).

Rows are made in the inference thread right after the model, once per batch, so the
per-request work left on the edge's event loop is slicing a list.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from models.errors import DataError
from models.family import Serving, Tensor
from models.predictor import Predictor

#: decimals in /v1 answers (the v2 tensors carry the full float32 values)
DECIMALS = 5
#: at least one non-blank character
NON_BLANK = r"\S"
LIMITS = {"max_texts": 64, "max_text_chars": 2000}


@dataclass(frozen=True, slots=True)
class EmotionRow:
    scores: list[float]
    rounded: dict[str, float]
    labels: list[str]
    top: str

    def as_json(self) -> dict[str, Any]:
        return {"scores": self.rounded, "labels": self.labels, "top": self.top}


class EmotionResult(BaseModel):
    scores: dict[str, float]
    labels: list[str] = Field(description="labels whose score reaches the model's threshold")
    top: str


def text_type(limits: Mapping[str, int]) -> Any:
    return Annotated[str, Field(min_length=1, max_length=limits["max_text_chars"], pattern=NON_BLANK)]


@functools.lru_cache(maxsize=8)
def _view(predictor: Predictor) -> tuple[tuple[str, ...], np.ndarray]:
    """Labels and per-label thresholds of one loaded version (positive when score >= threshold)."""
    manifest = predictor.bundle.manifest
    labels = tuple(manifest["labels"])
    return labels, np.array([float(manifest["thresholds"][label]) for label in labels], dtype=np.float32)


def rows(scores: np.ndarray, predictor: Predictor) -> list[EmotionRow]:
    labels, thresholds = _view(predictor)
    scores = np.asarray(scores, dtype=np.float32)
    raw = scores.tolist()
    rounded = np.round(scores.astype(np.float64), DECIMALS).tolist()
    hits = (scores >= thresholds).tolist()
    top = scores.argmax(axis=1).tolist()
    return [
        EmotionRow(r, dict(zip(labels, q)), [label for label, hit in zip(labels, h) if hit], labels[t])
        for r, q, h, t in zip(raw, rounded, hits, top)
    ]


#: OIP v2: one BYTES tensor of texts
OIP_INPUTS = ((Tensor("text", "BYTES", (-1,)),),)


def _oip_inputs(predictor: Predictor) -> tuple[tuple[Tensor, ...], ...]:
    return OIP_INPUTS


def _oip_text(elements: Mapping[str, Any], limits: Mapping[str, int]) -> str:
    value = elements["text"]
    if not isinstance(value, str):
        raise DataError("BYTES elements must be strings")
    if not value.strip():
        raise DataError("empty text")
    if len(value) > limits["max_text_chars"]:
        raise DataError(f"{len(value)} characters exceeds the limit of {limits['max_text_chars']}")
    return value


def _oip_output(manifest: Mapping[str, Any]) -> Tensor:
    return Tensor("scores", "FP32", (-1, len(manifest["labels"])))


def _oip_values(answer_rows: Sequence[EmotionRow]) -> np.ndarray:
    return np.asarray([row.scores for row in answer_rows], dtype=np.float32)


SERVING = Serving(
    path="/v1/emotion",
    summary="emotion label scores of one or more texts",
    one="text",
    many="texts",
    request_doc="One text or a list of texts.",
    limits=LIMITS,
    max_items="max_texts",
    item_type=text_type,
    rows=rows,
    answer="results",
    answer_json=EmotionRow.as_json,
    answer_type=EmotionResult,
    answer_doc=None,
    oip_inputs=_oip_inputs,
    oip_output=_oip_output,
    oip_item=_oip_text,
    oip_values=_oip_values,
    store_route="/v1/feedback",
)
