"""What the rest of the system asks of a model family, as one frozen record.

Each family builds its record in ``models/<family>/family.py`` from plain data and
callables; :mod:`models.families` lists them. The edge, the hub, the federated apps and
the CLI read a family's record instead of branching on its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.bundle import Bundle
from models.predictor import Predictor
from models.runtime import Runner
from models.task import Task, Weights


class Pipeline(Protocol):
    """A family's central pipeline (``models/<family>/pipeline.py``): train, evaluate, export."""

    def train(self, data: Path, out: Path, seed: int = 0, show_progress: bool = True) -> Bundle:
        """Train on ``data``, export every backend, install ``out/<family>/<version>/``."""
        ...

    def evaluate(
        self, bundle_dir: Path, data: Path, backend: str = "onnx", show_progress: bool = True
    ) -> dict[str, Any]:
        """The CLI's ``nexus models eval`` report: ``model``, ``model_version``, ``backend``, ``n`` and the score."""
        ...

    def export(self, weights: Weights, folder: Path, base: Path | None = None) -> None:
        """Write the artifacts of its backends (``models.bundle.ARTIFACTS``) from fp32 weights.

        ``base``: the bundle a federated run started from; a family whose weights are only
        part of the model (emotion-accurate: the head) takes the rest from it.
        """
        ...


@dataclass(frozen=True)
class Tensor:
    """An Open Inference Protocol v2 tensor's metadata (-1: any size).

    ``accepts`` names the other datatypes a request may send for an input (the edge decodes
    them to Python values alike: an INT64 count where FP64 is declared, say).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    accepts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Serving:
    """How the edge serves a family: its /v1 route, the items of a request, the answer rows, its OIP v2 tensors.

    ``limits`` names the per-request limits (and their defaults) the family's item types
    take; a node's setting of the same name (``EdgeSettings.max_texts``...) overrides the
    default. The callables run on the edge: ``rows`` in the inference thread once per
    batch, the others per request.
    """

    #: the /v1 scoring route and its OpenAPI summary
    path: str
    summary: str
    #: body fields of a request: one item, or a list of items; and the request's docstring
    one: str
    many: str
    request_doc: str
    limits: Mapping[str, int]
    #: which of ``limits`` bounds the items of one request
    max_items: str
    #: pydantic type of one item under the given limits
    item_type: Callable[[Mapping[str, int]], Any]
    #: a batch's model outputs -> one answer row per item
    rows: Callable[[np.ndarray, Predictor], list[Any]]
    #: field of the /v1 answer listing one entry per item, the entry's JSON, and its pydantic type (documentation)
    answer: str
    answer_json: Callable[[Any], Any]
    answer_type: Any
    answer_doc: str | None
    #: Open Inference Protocol v2. The input sets a request may send to a loaded version, each
    #: a tuple of tensors of shape [B] (one element per item); the first set is the one the
    #: model metadata advertises
    oip_inputs: Callable[[Predictor], tuple[tuple[Tensor, ...], ...]]
    #: the output tensor of a bundle (its manifest)
    oip_output: Callable[[Mapping[str, Any]], Tensor]
    #: one item's elements (input name -> value: text for BYTES, a number or bool otherwise; a
    #: JSON request's BYTES element may be any JSON value) -> the item; raises DataError or
    #: pydantic's ValidationError
    oip_item: Callable[[Mapping[str, Any], Mapping[str, int]], Any]
    #: answer rows -> the OIP output tensor's values
    oip_values: Callable[[Sequence[Any]], np.ndarray]
    #: the edge's local-store route that collects this family's labelled examples, if any
    store_route: str | None = None


#: rows and open sequence length of the random inputs a family's ``probe_inputs`` makes
PROBE_ROWS = 256
PROBE_LENGTH = 16


def probe_shape(declared: Sequence[int]) -> list[int]:
    """A manifest's declared tensor shape made concrete: PROBE_ROWS rows, PROBE_LENGTH for other -1 dimensions."""
    return [PROBE_ROWS if i == 0 else (PROBE_LENGTH if d == -1 else d) for i, d in enumerate(declared)]


@dataclass(frozen=True)
class Family:
    name: str
    #: the metric ``nexus models eval`` reports, federated rounds maximise and the dashboard shows
    score_name: str
    #: a verified bundle and the runner of one of its artifacts -> the family's predictor
    predictor: Callable[[Bundle, Runner], Predictor]
    #: a featurizer spec (a manifest's ``featurizer``) -> the family's featurizer
    featurizer: Callable[[dict[str, Any]], Any]
    #: the central pipeline, imported on first use: it imports onnx (about a second), which
    #: the edge, which only serves bundles, never needs
    pipeline: Callable[[], Pipeline]
    serving: Serving
    #: a federated update becomes a bundle on the hub through ``pipeline().export``; these random
    #: inputs of a manifest's declared tensors check that its backends agree
    probe_inputs: Callable[[Mapping[str, Any], Weights, np.random.Generator], dict[str, np.ndarray]]
    #: the federated training task (numpy; the ClientApp and ServerApp use it)
    task: Task
