"""Serve-time tokenization of the accurate tier: the bundle's own ``tokenizer.json`` through ``tokenizers``.

The same WordPiece tokenizer the encoder was fine-tuned with (the file is copied from
the encoder package into the bundle, and its sha256 is in the manifest), truncated to the
manifest's ``max_length``. No torch, no transformers: this is what the edge runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from models.errors import NexusError

#: the file in a bundle (and in the encoder package) that holds the tokenizer
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TokenSpec:
    """A manifest's ``featurizer``: which tokenizer file, and the longest token sequence kept."""

    tokenizer: str = TOKENIZER_FILE
    max_length: int = 64

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TokenSpec:
        try:
            tokenizer, max_length = str(spec["tokenizer"]), int(spec["max_length"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NexusError(f"accurate-tier featurizer spec needs 'tokenizer' and 'max_length' ({exc!r})") from None
        if "/" in tokenizer or tokenizer in ("", ".", ".."):
            raise NexusError(f"tokenizer must name a file in the bundle, got {tokenizer!r}")
        if not 2 <= max_length <= 512:
            raise NexusError(f"max_length must be in 2..512, got {max_length}")
        return cls(tokenizer, max_length)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "wordpiece", "tokenizer": self.tokenizer, "max_length": self.max_length}


class TextTokens:
    """Texts -> token ids, and padded ``input_ids`` / ``attention_mask`` batches."""

    def __init__(self, spec: TokenSpec, folder: Path) -> None:
        self.spec = spec
        path = Path(folder) / spec.tokenizer
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own untyped errors on a bad file
            raise NexusError(f"{path}: not a tokenizers file ({exc})") from None
        # set once here: encoding is read-only afterwards, so inference threads may share it
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(spec.max_length)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        if len(texts) == 1:  # the batch call's thread pool costs more than one text's encoding
            return [self._tokenizer.encode(texts[0]).ids]
        return [enc.ids for enc in self._tokenizer.encode_batch_fast(list(texts))]

    @staticmethod
    def pad(ids: Sequence[Sequence[int]], length: int | None = None, dtype: Any = np.int64) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask`` [B, length] (default: the longest row), zero-padded on the right."""
        width = length or max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), width), dtype)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row[:width]
        mask = np.zeros((len(ids), width), dtype)
        for i, row in enumerate(ids):
            mask[i, : min(len(row), width)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}
