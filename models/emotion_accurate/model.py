"""Serving side of the accurate tier: texts -> tokens -> the exported encoder -> scores (and pooled features).

Texts of a batch are sorted by token count and run in sub-batches padded to their own
longest text, so one long text does not make a whole batch pay for its padding. A
backend whose artifact has fixed shapes (TFLite: [1, max_length] int32) says so in the
manifest's ``io`` entry and gets exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import Bundle, BundleError, verify_bundle
from models.emotion_accurate.tokens import TextTokens, TokenSpec
from models.errors import NexusError
from models.predictor import LabelledPredictor
from models.runtime import Runner, open_runner

#: texts per model call; batches of similar length pad little, and 32 is past ORT's per-call overhead
SUB_BATCH = 32
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("scores", "features")


class ArtifactIO:
    """How one backend's artifact is called: tensor names, integer dtype, fixed [batch, length] if any."""

    def __init__(self, spec: dict[str, Any] | None) -> None:
        spec = spec or {}
        self.inputs: dict[str, str] = {name: str(spec.get("inputs", {}).get(name, name)) for name in INPUTS}
        self.outputs: dict[str, str] = {name: str(spec.get("outputs", {}).get(name, name)) for name in OUTPUTS}
        self.dtype = np.dtype(str(spec.get("dtype", "int64")))
        if self.dtype not in (np.dtype(np.int64), np.dtype(np.int32)):
            raise NexusError(f"artifact input dtype must be int64 or int32, got {self.dtype}")
        shape = spec.get("shape")
        self.batch: int | None = int(shape[0]) if shape else None
        self.length: int | None = int(shape[1]) if shape else None


class AccuratePredictor(LabelledPredictor):
    """Scores [B, labels] of a batch of texts; ``features`` gives the pooled encoder output [B, hidden]."""

    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        manifest = bundle.manifest
        try:
            self.tokens = TextTokens(TokenSpec.from_dict(manifest["featurizer"]), bundle.path)
            self._labels = [str(name) for name in manifest["labels"]]
            self._thresholds = np.array([float(manifest["thresholds"][name]) for name in self._labels])
            self.hidden = int(manifest["architecture"]["hidden"])
            self._io = ArtifactIO(manifest.get("io", {}).get(runner.backend))
        except NexusError as exc:
            raise BundleError(f"{bundle.path}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(
                f"{bundle.path}: accurate-tier manifest lacks or garbles labels/thresholds/featurizer/io ({exc!r})"
            ) from None
        super().__init__(bundle, runner)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [B, C] sigmoid scores."""
        return self.outputs(texts)[0]

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [B, hidden]: the attention-masked mean of the encoder's last layer (the head's input)."""
        return self.outputs(texts)[1]

    def outputs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        scores = np.zeros((len(texts), len(self._labels)), np.float32)
        features = np.zeros((len(texts), self.hidden), np.float32)
        if not texts:
            return scores, features
        ids = self.tokens.ids(texts)
        order = np.argsort([len(row) for row in ids], kind="stable")
        step = self._io.batch or SUB_BATCH
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            feed = self.tokens.pad([ids[i] for i in rows], self._io.length, self._io.dtype)
            out = self.runner.run({self._io.inputs[name]: feed[name] for name in INPUTS})
            scores[rows] = out[self._io.outputs["scores"]]
            features[rows] = out[self._io.outputs["features"]]
        return scores, features


def load(bundle_dir: Path, backend: str = "onnx-int8", threads: int = 1) -> AccuratePredictor:
    """A verified accurate-tier bundle served by one of its artifacts (the pipeline's own measurements)."""
    bundle = verify_bundle(bundle_dir)
    return AccuratePredictor(bundle, open_runner(bundle, backend, threads))
