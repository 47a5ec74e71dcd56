"""Session dict -> float32 feature vector, built from the spec stored in the manifest.

Training (:func:`fit_spec` on the training rows) and serving (:meth:`Featurizer.from_spec`
on a bundle's manifest) share this one implementation, so the two cannot drift.

Vector layout: the numeric columns (transformed, then standardised), then for each
categorical column a one-hot block of ``len(vocabulary) + 1`` (the last slot is the
unknown bucket), then the boolean columns as 0/1.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping, Sequence

import numpy as np

from models.errors import DataError

SPEC_VERSION = 1
#: column -> transform applied before standardisation
NUMERIC: dict[str, str] = {
    "Administrative": "log1p",
    "Administrative_Duration": "log1p",
    "Informational": "log1p",
    "Informational_Duration": "log1p",
    "ProductRelated": "log1p",
    "ProductRelated_Duration": "log1p",
    "BounceRates": "identity",
    "ExitRates": "identity",
    "PageValues": "log1p",
    "SpecialDay": "identity",
}
CATEGORICAL = ("Month", "OperatingSystems", "Browser", "Region", "TrafficType", "VisitorType")
BOOLEAN = ("Weekend",)
#: Region is the federated partition key: each edge node sees a single value, so its
#: one-hot weights would be trained by one node only and diluted by every average; it
#: also carries almost no signal on this data set (see docs in the manifest's spec).
EXCLUDED = {"Region": "federated partition key: constant on each edge node, so not learnable by federated averaging"}
#: categories seen fewer times than this in training fall into the unknown bucket, which
#: therefore learns a sensible weight for categories never seen at all
MIN_COUNT = 10
UNKNOWN = "<unknown>"
_TRANSFORMS = ("log1p", "identity")


def _category(value: Any) -> str | None:
    """Categories arrive as strings or integer codes (``2`` and ``"2"`` are the same)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Integral) and not isinstance(value, bool):
        return str(int(value))
    return None


def _column(sessions: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    try:
        return [s[name] for s in sessions]
    except (KeyError, TypeError):
        for i, s in enumerate(sessions):
            if not isinstance(s, Mapping):
                raise DataError(f"session {i}: expected an object with the session fields, got {type(s).__name__}") from None
            if name not in s:
                raise DataError(f"session {i}: required field {name!r} is missing") from None
        raise


def _type_error(i: int, name: str, expected: str, value: Any) -> DataError:
    return DataError(f"session {i}: field {name!r} must be {expected}, got {type(value).__name__} {value!r:.40}")


def _numbers(sessions: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    values = _column(sessions, name)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise _type_error(i, name, "a number", v)
        if not math.isfinite(v):
            raise DataError(f"session {i}: field {name!r} must be finite, got {v!r}")
    return np.asarray(values, dtype=np.float64)


def _categories(sessions: Sequence[Mapping[str, Any]], name: str) -> list[str]:
    out = []
    for i, v in enumerate(_column(sessions, name)):
        category = _category(v)
        if category is None:
            raise _type_error(i, name, "a string or integer code", v)
        out.append(category)
    return out


def _booleans(sessions: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    values = _column(sessions, name)
    for i, v in enumerate(values):
        if not isinstance(v, (bool, np.bool_)):
            raise _type_error(i, name, "true or false", v)
    return np.asarray(values, dtype=np.float64)


def _transform(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "log1p":
        # The original UCI release codes unknown durations as -1; treat them as 0.
        return np.log1p(np.maximum(x, 0.0))
    return x


def _sort_key(category: str) -> tuple[int, int, str]:
    return (0, int(category), "") if category.isdigit() else (1, 0, category)


@dataclass(frozen=True)
class NumericFeature:
    name: str
    transform: str
    mean: float
    std: float


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    vocabulary: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.vocabulary) + 1


@dataclass(frozen=True)
class Featurizer:
    numeric: tuple[NumericFeature, ...]
    categorical: tuple[CategoricalFeature, ...]
    boolean: tuple[str, ...]
    excluded: Mapping[str, str]

    @property
    def n_features(self) -> int:
        return len(self.numeric) + sum(c.width for c in self.categorical) + len(self.boolean)

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric) + tuple(c.name for c in self.categorical) + self.boolean

    def transform(self, sessions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Validated sessions -> float32 [B, F]; unknown categories go to their column's unknown slot."""
        if isinstance(sessions, (str, bytes, Mapping)):
            raise DataError("expected a list of session objects")
        out = np.zeros((len(sessions), self.n_features), dtype=np.float32)
        col = 0
        for f in self.numeric:
            out[:, col] = (_transform(f.transform, _numbers(sessions, f.name)) - f.mean) / f.std
            col += 1
        rows = np.arange(len(sessions))
        for c in self.categorical:
            index = {v: i for i, v in enumerate(c.vocabulary)}
            unknown = len(c.vocabulary)
            slots = np.fromiter((index.get(v, unknown) for v in _categories(sessions, c.name)), dtype=np.int64, count=len(sessions))
            out[rows, col + slots] = 1.0
            col += c.width
        for name in self.boolean:
            out[:, col] = _booleans(sessions, name)
            col += 1
        return out

    def feature_names(self) -> list[str]:
        names = [f.name for f in self.numeric]
        for c in self.categorical:
            names += [f"{c.name}={v}" for v in c.vocabulary] + [f"{c.name}={UNKNOWN}"]
        return names + list(self.boolean)

    def to_spec(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "n_features": self.n_features,
            "numeric": [{"name": f.name, "transform": f.transform, "mean": f.mean, "std": f.std} for f in self.numeric],
            "categorical": [{"name": c.name, "vocabulary": list(c.vocabulary), "unknown_bucket": True} for c in self.categorical],
            "boolean": [{"name": name} for name in self.boolean],
            "excluded": dict(self.excluded),
            "layout": "numeric ((transform(x) - mean) / std), then one-hot per categorical (vocabulary order, unknown last), then booleans as 0/1",
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Featurizer:
        try:
            if spec["version"] != SPEC_VERSION:
                raise DataError(f"featurizer spec version {spec['version']!r} is not supported (expected {SPEC_VERSION})")
            numeric = tuple(NumericFeature(f["name"], f["transform"], float(f["mean"]), float(f["std"])) for f in spec["numeric"])
            categorical = tuple(CategoricalFeature(c["name"], tuple(str(v) for v in c["vocabulary"])) for c in spec["categorical"])
            featurizer = cls(numeric, categorical, tuple(b["name"] for b in spec["boolean"]), dict(spec.get("excluded", {})))
            expected = int(spec["n_features"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed funnel featurizer spec ({type(exc).__name__}: {exc})") from None
        bad = [f.transform for f in numeric if f.transform not in _TRANSFORMS]
        if bad:
            raise DataError(f"featurizer spec names unknown transform {bad[0]!r}")
        if any(f.std <= 0 for f in numeric):
            raise DataError("featurizer spec has a non-positive std")
        if featurizer.n_features != expected:
            raise DataError(f"featurizer spec says {expected} features but describes {featurizer.n_features}")
        return featurizer


def fit_spec(sessions: Sequence[Mapping[str, Any]], min_count: int = MIN_COUNT) -> dict[str, Any]:
    """Build the featurizer spec from training sessions: scaling statistics and vocabularies."""
    if not sessions:
        raise DataError("cannot fit a featurizer on zero sessions")
    numeric = []
    for name, kind in NUMERIC.items():
        x = _transform(kind, _numbers(sessions, name))
        std = float(x.std())
        numeric.append(NumericFeature(name, kind, float(x.mean()), std if std > 1e-12 else 1.0))
    categorical = []
    for name in CATEGORICAL:
        if name in EXCLUDED:
            continue
        counts = Counter(_categories(sessions, name))
        vocabulary = sorted((v for v, n in counts.items() if n >= min_count), key=_sort_key)
        categorical.append(CategoricalFeature(name, tuple(vocabulary)))
    return Featurizer(tuple(numeric), tuple(categorical), BOOLEAN, dict(EXCLUDED)).to_spec()
