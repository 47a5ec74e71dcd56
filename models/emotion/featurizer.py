"""Text -> hashed n-gram ids and bag weights, the one featurizer of the emotion family.

Training, evaluation and serving all build it from the manifest's ``featurizer`` spec, so
a bundle carries everything needed to reproduce its inputs. The hash is BLAKE2b (8-byte
digest, little-endian, of ``kind + "\\x1f" + n-gram`` in UTF-8) masked to the bucket count:
stable across processes, platforms and Python versions, unlike ``hash()``.
"""

from __future__ import annotations

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
#: entries per memo (words, word n-grams); full memos are cleared, bounding memory to ~20 MB
_CACHE_LIMIT = 1 << 15


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
    """Builds ``(ids, weights)`` for texts; memoises per-word ids (Zipf makes the cache hit).

    Safe to share between threads: the memos are plain dicts whose cached lists are never
    mutated, so a concurrent clear only costs a recomputation.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = FeaturizerSpec.from_dict(spec)
        self._token_re = re.compile(self.spec.token_pattern)
        self._word_cache: dict[str, list[int]] = {}
        self._gram_cache: dict[str, int] = {}
        self._sqrt = self.spec.weighting == "1/sqrt(n)"
        self._longer = range(max(self.spec.word_ngrams[0], 2), self.spec.word_ngrams[1] + 1)

    def tokens(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        cut = self.spec.max_token_chars  # bounds the char n-grams of URLs and key mashing
        return [tok[:cut] for tok in self._token_re.findall(text)[: self.spec.max_tokens]]

    def _word_ids(self, word: str) -> list[int]:
        """The word's unigram id followed by its boundary-marked char n-gram ids."""
        ids = self._word_cache.get(word)
        if ids is not None:
            return ids
        spec = self.spec
        ids = [bucket_of("w", word, spec.buckets)] if spec.word_ngrams[0] == 1 else []
        lo, hi = spec.char_ngrams
        if hi:
            marked = spec.char_boundary[0] + word + spec.char_boundary[1]
            for n in range(lo, min(hi, len(marked)) + 1):
                ids.extend(bucket_of("c", marked[i : i + n], spec.buckets) for i in range(len(marked) - n + 1))
        if len(self._word_cache) >= _CACHE_LIMIT:
            self._word_cache.clear()
        self._word_cache[word] = ids
        return ids

    def _gram_id(self, gram: str) -> int:
        found = self._gram_cache.get(gram)
        if found is None:
            if len(self._gram_cache) >= _CACHE_LIMIT:
                self._gram_cache.clear()
            found = self._gram_cache[gram] = bucket_of("w", gram, self.spec.buckets)
        return found

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Ids of one text in text order (repeats kept: the bag sums them) and their weights.

        Token by token: its word id, its char n-gram ids, then the word n-grams ending at
        it; cut after ``max_ids`` so a long text keeps its beginning. Every id weighs 1/n
        or 1/sqrt(n) for the n ids kept; an empty text has no ids.
        """
        toks = self.tokens(text)
        raw: list[int] = []
        # Cache look-ups inlined: this loop is the serving hot path (a list-comprehension
        # variant measured slower).
        word_cache, gram_cache = self._word_cache, self._gram_cache
        for i, tok in enumerate(toks):
            cached = word_cache.get(tok)
            raw.extend(cached if cached is not None else self._word_ids(tok))
            for n in self._longer:
                if i + 1 >= n:
                    gram = " ".join(toks[i + 1 - n : i + 1])
                    found = gram_cache.get(gram)
                    raw.append(found if found is not None else self._gram_id(gram))
        del raw[self.spec.max_ids :]
        ids = np.array(raw, dtype=np.int64)
        if not raw:
            return ids, np.zeros(0, np.float32)
        weight = 1.0 / (np.sqrt(len(raw)) if self._sqrt else len(raw))
        return ids, np.full(len(raw), weight, dtype=np.float32)

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``ids`` int64 [B, L] and ``weights`` float32 [B, L]; padding is id 0 with weight 0.

        L is the longest text's id count rounded up to a power of two (at least
        ``min_length``, at most ``max_ids`` rounded up likewise).
        """
        feats = [self.features(t) for t in texts]
        width = padded_length(max((len(i) for i, _ in feats), default=0), self.spec.min_length)
        ids = np.zeros((len(feats), width), dtype=np.int64)
        weights = np.zeros((len(feats), width), dtype=np.float32)
        for row, (i, w) in enumerate(feats):
            ids[row, : len(i)] = i
            weights[row, : len(w)] = w
        return ids, weights
