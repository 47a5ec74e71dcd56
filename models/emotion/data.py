"""Reader for the GoEmotions-Ekman layout: ``text<TAB>label ids comma-separated<TAB>id``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import DataError


@dataclass(frozen=True)
class EmotionData:
    texts: list[str]
    labels: np.ndarray  # bool [N, C]


def read_labels(path: Path) -> list[str]:
    """Label names; the label id is the line number counted from 0."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path}: no label names")
    return names


def read_tsv(path: Path, n_labels: int) -> EmotionData:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a .tsv file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    texts: list[str] = []
    labels = np.zeros((len(lines), n_labels), dtype=bool)
    for lineno, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(
                f"{path}:{lineno}: expected 3 tab-separated fields (text, label ids, id), got {len(fields)}"
            )
        text, ids, _ = fields
        for token in ids.split(","):
            if not token.strip().isdigit():
                raise DataError(f"{path}:{lineno}: label ids must be comma-separated integers, got {ids!r}")
            label = int(token)
            if label >= n_labels:
                raise DataError(f"{path}:{lineno}: unknown label id {label} (labels are 0..{n_labels - 1})")
            labels[len(texts), label] = True
        texts.append(text)
    if not texts:
        raise DataError(f"{path}: no rows")
    return EmotionData(texts, labels[: len(texts)])
