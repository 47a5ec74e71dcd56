"""Text -> hashed n-gram ids and bag weights, the one featurizer of the emotion family.

Training, evaluation and serving all build it from the manifest's ``featurizer`` spec, so
a bundle carries everything needed to reproduce its inputs. The hash is BLAKE2b (8-byte
digest, little-endian, of ``kind + "\\x1f" + n-gram`` in UTF-8) masked to the bucket count:
stable across processes, platforms and Python versions, unlike ``hash()``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.errors import NexusError

#: the spec a new model is trained with; a bundle's manifest carries its own copy
DEFAULT_SPEC: dict[str, Any] = {
    "kind": "hashed-ngrams/1",
    "normalize": "NFKC+lower",
    "token_pattern": r"\w+(?:'\w+)*|[^\w\s]",
    "max_tokens": 64,
    "max_token_chars": 24,
    "max_ids": 256,
    "word_ngrams": [1, 2],
    "char_ngrams": [3, 5],
    "char_boundary": ["<", ">"],
    "hash": "blake2b-64-le",
    "buckets": 1 << 17,
    "weighting": "1/sqrt(n)",
    "min_length": 16,
    "length_buckets": "power-of-two",
}

_WEIGHTINGS = ("1/n", "1/sqrt(n)")
#: LRU entries per featurizer: words and token windows (packed ids; about 35 MB together when full)
WORD_CACHE = 1 << 15
WINDOW_CACHE = 1 << 16


@dataclass(frozen=True)
class FeaturizerSpec:
    kind: str
    normalize: str
    token_pattern: str
    max_tokens: int
    max_token_chars: int
    max_ids: int
    word_ngrams: tuple[int, int]
    char_ngrams: tuple[int, int]
    char_boundary: tuple[str, str]
    hash: str
    buckets: int
    weighting: str
    min_length: int
    length_buckets: str

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FeaturizerSpec:
        try:
            parsed = cls(
                kind=str(spec["kind"]),
                normalize=str(spec["normalize"]),
                token_pattern=str(spec["token_pattern"]),
                max_tokens=int(spec["max_tokens"]),
                max_token_chars=int(spec["max_token_chars"]),
                max_ids=int(spec["max_ids"]),
                word_ngrams=(int(spec["word_ngrams"][0]), int(spec["word_ngrams"][1])),
                char_ngrams=(int(spec["char_ngrams"][0]), int(spec["char_ngrams"][1])),
                char_boundary=(str(spec["char_boundary"][0]), str(spec["char_boundary"][1])),
                hash=str(spec["hash"]),
                buckets=int(spec["buckets"]),
                weighting=str(spec["weighting"]),
                min_length=int(spec["min_length"]),
                length_buckets=str(spec["length_buckets"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise NexusError(f"emotion featurizer spec is malformed ({exc!r})") from None
        parsed._check()
        return parsed

    def _check(self) -> None:
        problems = []
        if self.kind != "hashed-ngrams/1" or self.hash != "blake2b-64-le" or self.normalize != "NFKC+lower":
            problems.append(f"unsupported kind/hash/normalize {self.kind}/{self.hash}/{self.normalize}")
        if self.buckets < 2 or self.buckets & (self.buckets - 1):
            problems.append(f"buckets must be a power of two, got {self.buckets}")
        if self.weighting not in _WEIGHTINGS:
            problems.append(f"weighting must be one of {_WEIGHTINGS}, got {self.weighting!r}")
        if self.length_buckets != "power-of-two" or self.min_length < 1 or self.max_ids < 1:
            problems.append("length_buckets must be 'power-of-two' with min_length >= 1 and max_ids >= 1")
        if not 1 <= self.word_ngrams[0] <= self.word_ngrams[1]:
            problems.append(f"bad word_ngrams {self.word_ngrams}")
        if not 1 <= self.char_ngrams[0] <= self.char_ngrams[1] and self.char_ngrams != (0, 0):
            problems.append(f"bad char_ngrams {self.char_ngrams}")
        if problems:
            raise NexusError("emotion featurizer spec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def bucket_of(kind: str, gram: str, buckets: int) -> int:
    """The documented hash: BLAKE2b-64 of ``kind \\x1f gram`` (UTF-8), little-endian, mod buckets."""
    digest = hashlib.blake2b(f"{kind}\x1f{gram}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (buckets - 1)


def padded_length(n: int, min_length: int) -> int:
    """Round up to a power of two so runtimes see few distinct shapes (LiteRT resizes cost)."""
    return max(min_length, 1 << max(n - 1, 0).bit_length())


class Featurizer:
    """Builds ``(ids, weights)`` for texts.

    The ids at a token depend only on the window of the last ``word_ngrams[1]`` tokens (its
    word and char n-gram ids, then the word n-grams ending at it), so they are memoised per
    window, as packed bytes, in a bounded LRU (``functools.lru_cache``: hits never leave C, and
    it is safe to share between threads); Zipf makes the windows of common words hit. A text's
    ids are then one ``bytes.join`` and a batch's one ``numpy.frombuffer``: no Python int per
    id on the hot path. Same ids, order and weights as the reference loop this replaced
    (``tests/models/test_featurizer_identity.py`` compares them on real texts).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = FeaturizerSpec.from_dict(spec)
        self._token_re = re.compile(self.spec.token_pattern)
        self._sqrt = self.spec.weighting == "1/sqrt(n)"
        self._window = self.spec.word_ngrams[1]
        self._longer = range(max(self.spec.word_ngrams[0], 2), self.spec.word_ngrams[1] + 1)
        self._mask = self.spec.buckets - 1
        #: packed ids: 4 bytes each while every bucket fits (it always does in practice)
        self._packed = np.dtype("<u4") if self.spec.buckets <= 1 << 32 else np.dtype("<u8")
        self._prefix = {kind: hashlib.blake2b(f"{kind}\x1f".encode(), digest_size=8) for kind in ("w", "c")}
        self._word = functools.lru_cache(maxsize=WORD_CACHE)(self._word_ids)
        self._position = functools.lru_cache(maxsize=WINDOW_CACHE)(self._window_ids)
        #: (ids, width) -> a row of weights; at most max_ids x a few widths
        self._rows = functools.lru_cache(maxsize=4096)(self._weight_row)

    def tokens(self, text: str) -> list[str]:
        cut = self.spec.max_token_chars  # bounds the char n-grams of URLs and key mashing
        return [tok[:cut] for tok in self._raw_tokens(text)]

    def _raw_tokens(self, text: str) -> list[str]:
        """Tokens before the ``max_token_chars`` cut, which the memoised functions make on a miss."""
        text = unicodedata.normalize("NFKC", text).lower()
        return self._token_re.findall(text)[: self.spec.max_tokens]

    def _hash(self, kind: str, gram: str) -> int:
        """:func:`bucket_of`, from a BLAKE2b state that has already absorbed ``kind \\x1f`` (cheaper to copy)."""
        state = self._prefix[kind].copy()
        state.update(gram.encode())
        return int.from_bytes(state.digest(), "little") & self._mask

    def _pack(self, ids: list[int]) -> bytes:
        return np.array(ids, dtype=self._packed).tobytes()

    def _word_ids(self, word: str) -> bytes:
        """The word's unigram id followed by its boundary-marked char n-gram ids, packed."""
        spec = self.spec
        word = word[: spec.max_token_chars]
        ids = [self._hash("w", word)] if spec.word_ngrams[0] == 1 else []
        lo, hi = spec.char_ngrams
        if hi:
            marked = spec.char_boundary[0] + word + spec.char_boundary[1]
            for n in range(lo, min(hi, len(marked)) + 1):
                ids.extend(self._hash("c", marked[i : i + n]) for i in range(len(marked) - n + 1))
        return self._pack(ids)

    def _window_ids(self, window: tuple[str, ...]) -> bytes:
        """The ids at the window's last token: its word ids, then the word n-grams ending at it."""
        cut = [tok[: self.spec.max_token_chars] for tok in window]
        grams = [self._hash("w", " ".join(cut[-n:])) for n in self._longer if len(cut) >= n]
        return self._word(window[-1]) + self._pack(grams)

    def _ids(self, text: str) -> bytes:
        """One text's packed ids in text order (repeats kept: the bag sums them), cut after ``max_ids``."""
        toks = self._raw_tokens(text)
        if not toks:
            return b""
        if self._window == 1:
            packed = b"".join(map(self._word, toks))
        elif self._window == 2:
            packed = self._word(toks[0]) + b"".join(map(self._position, zip(toks, toks[1:])))
        else:
            k = self._window
            packed = b"".join(map(self._position, (tuple(toks[max(0, i + 1 - k) : i + 1]) for i in range(len(toks)))))
        return packed[: self.spec.max_ids * self._packed.itemsize]

    def _weight_row(self, n: int, width: int) -> bytes:
        """A row of ``width`` float32 weights: 1/n or 1/sqrt(n) (computed in float64) for the n ids, 0 after."""
        weight = np.float32(1.0 / (np.sqrt(np.float64(n)) if self._sqrt else np.float64(n))) if n else np.float32(0)
        return weight.tobytes() * n + bytes(4 * (width - n))

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Ids of one text in text order (repeats kept: the bag sums them) and their weights.

        Token by token: its word id, its char n-gram ids, then the word n-grams ending at
        it; cut after ``max_ids`` so a long text keeps its beginning. Every id weighs 1/n
        or 1/sqrt(n) for the n ids kept; an empty text has no ids.
        """
        ids = np.frombuffer(self._ids(text), self._packed).astype(np.int64)
        return ids, np.frombuffer(self._rows(len(ids), len(ids)), np.float32).copy()

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``ids`` int64 [B, L] and ``weights`` float32 [B, L]; padding is id 0 with weight 0.

        L is the longest text's id count rounded up to a power of two (at least
        ``min_length``, at most ``max_ids`` rounded up likewise).
        """
        packed = [self._ids(t) for t in texts]
        size = self._packed.itemsize
        counts = [len(row) // size for row in packed]
        width = padded_length(max(counts, default=0), self.spec.min_length)
        # padded rows joined as bytes: a handful of numpy calls per batch, whatever its size
        full = width * size
        ids = np.frombuffer(b"".join([row + bytes(full - len(row)) for row in packed]), self._packed)
        weights = np.frombuffer(b"".join([self._rows(n, width) for n in counts]), np.float32)
        shape = (len(packed), width)
        return ids.reshape(shape).astype(np.int64), weights.reshape(shape).copy()
