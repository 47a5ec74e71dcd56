"""Turning a batch of model outputs into per-item answers, once per batch.

Runs in the inference thread right after the model, so the per-request work left on
the event loop is slicing a list; numpy is called once per batch, not once per request.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic_core
from starlette.responses import Response

from edge_worker.repository import Served

#: decimals in /v1 answers (the v2 tensors carry the full float32 values)
DECIMALS = 5


@dataclass(frozen=True, slots=True)
class EmotionRow:
    scores: list[float]
    rounded: dict[str, float]
    labels: list[str]
    top: str

    def as_json(self) -> dict[str, Any]:
        return {"scores": self.rounded, "labels": self.labels, "top": self.top}


@functools.lru_cache(maxsize=8)
def emotion_view(served: Served) -> tuple[tuple[str, ...], np.ndarray]:
    """Labels and per-label thresholds of one loaded emotion version (positive when score >= threshold)."""
    labels = tuple(served.manifest["labels"])
    thresholds = served.manifest["thresholds"]
    return labels, np.array([float(thresholds[label]) for label in labels], dtype=np.float32)


def emotion_rows(scores: np.ndarray, served: Served) -> list[EmotionRow]:
    labels, thresholds = emotion_view(served)
    scores = np.asarray(scores, dtype=np.float32)
    raw = scores.tolist()
    rounded = np.round(scores.astype(np.float64), DECIMALS).tolist()
    hits = (scores >= thresholds).tolist()
    top = scores.argmax(axis=1).tolist()
    return [
        EmotionRow(r, dict(zip(labels, q)), [label for label, hit in zip(labels, h) if hit], labels[t])
        for r, q, h, t in zip(raw, rounded, hits, top)
    ]


def funnel_rows(probabilities: np.ndarray, served: Served) -> list[float]:
    return np.asarray(probabilities, dtype=np.float32).astype(np.float64).tolist()


ROW_MAKERS = {"emotion": emotion_rows, "funnel": funnel_rows}


class FastJSONResponse(Response):
    """JSON rendered by pydantic-core (Rust), several times faster than ``json.dumps`` here."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)
