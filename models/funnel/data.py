"""Online Shoppers CSV -> session dicts + labels, and the one held-out split everyone uses."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import DataError
from models.funnel.featurizer import BOOLEAN, CATEGORICAL, NUMERIC

FILE_NAME = "sessions.csv"
LABEL = "Revenue"
COLUMNS = (*NUMERIC, *CATEGORICAL, *BOOLEAN, LABEL)
#: the held-out split is fixed by this seed, independent of the training seed, so every
#: retrain and every federated experiment is scored on the same rows
SPLIT_SEED = 20181
TEST_FRACTION = 0.2
_BOOLS = {"true": True, "false": False}


@dataclass(frozen=True)
class SessionData:
    path: Path
    sessions: list[dict[str, Any]]
    labels: np.ndarray  # float32 [N], 1.0 = the session bought


def resolve(path: Path) -> Path:
    """The sessions file itself, or ``sessions.csv`` inside a folder."""
    path = Path(path)
    return path / FILE_NAME if path.is_dir() else path


def _parse(kind: str, text: str) -> Any:
    if kind == "number":
        value = float(text)
        if not np.isfinite(value):
            raise ValueError(text)
        return value
    if kind == "bool":
        return _BOOLS[text.strip().lower()]
    return text.strip()


_KINDS = {
    **{c: "number" for c in NUMERIC},
    **{c: "category" for c in CATEGORICAL},
    **{c: "bool" for c in (*BOOLEAN, LABEL)},
}


def read_sessions(path: Path) -> SessionData:
    """Every row of an Online Shoppers CSV (extra columns are ignored)."""
    path = resolve(path)
    # opened outside the `with` so that only open()'s own errors read as "no such file" / "cannot read"
    try:
        fh = open(path, newline="", encoding="utf-8")  # noqa: SIM115  (closed by `with fh:` below)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file (expected the Online Shoppers header)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a CSV file ({exc})") from None
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing column {missing[0]!r}")
        positions = [(c, header.index(c), _KINDS[c]) for c in COLUMNS]
        sessions: list[dict[str, Any]] = []
        labels: list[bool] = []
        try:
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path} line {line}: {len(row)} fields, header has {len(header)}")
                session = {}
                for column, index, kind in positions:
                    try:
                        session[column] = _parse(kind, row[index])
                    except (ValueError, KeyError):
                        expected = {"number": "a number", "bool": "TRUE or FALSE", "category": "a category"}[kind]
                        raise DataError(
                            f"{path} line {line}: column {column!r} has {row[index]!r:.40}, expected {expected}"
                        ) from None
                labels.append(session.pop(LABEL))
                sessions.append(session)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from None
    if not sessions:
        raise DataError(f"{path}: no data rows")
    return SessionData(path, sessions, np.asarray(labels, dtype=np.float32))


def split_indices(
    labels: np.ndarray, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: a seeded permutation of each class, its first ``test_fraction`` held out.

    Returns sorted ``(train_idx, test_idx)``; the same labels and seed always give the same rows.
    """
    labels = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    test = []
    for cls in (False, True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[: int(round(len(members) * test_fraction))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx)
    return train_idx, test_idx


def split_description(seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> dict[str, Any]:
    return {
        "method": (
            "stratified by Revenue: numpy default_rng(seed).permutation of each class's row indices, "
            "first test_fraction held out"
        ),
        "function": "models.funnel.data.split_indices",
        "seed": seed,
        "test_fraction": test_fraction,
    }
