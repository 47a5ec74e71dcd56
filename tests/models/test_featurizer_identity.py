"""The fast emotion featurizer (packed, memoised windows) makes exactly the ids and weights of the plain loop.

``reference`` below is the featurizer as it was before it was made fast (issue 15): one
token at a time, :func:`bucket_of` for every n-gram, ``numpy.full`` for the weights. The
bundles were trained on its output, so the served featurizer must match it bit for bit,
in order (the bag sums floats; another order would round differently), on real texts and
on the corners (empty text, long tokens, truncation, other n-gram ranges and weightings).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pytest

from models.emotion import featurizer as featurizer_module
from models.emotion.featurizer import DEFAULT_SPEC, Featurizer, FeaturizerSpec, bucket_of, padded_length
from tests.support.env import shared_data

CORNERS = [
    "",
    "   ",
    "!!!",
    "ok",
    "I love it!",
    "Ça va? 😂 I love it!",
    "ＨＥＬＬＯ, I don't ﬁne😂",
    "word " * 1000 + "x" * 10_000,
    "supercalifragilisticexpialidocious-and-then-some " * 3,
    "https://example.com/a/very/long/path?with=query&and=more#fragment",
    "don't won't can't y'all o'clock rock'n'roll",
    "数字 ١٢٣ ₂ ﬀ ⅷ",
    "a\x00b\tc\u2028d",
]
SPECS = {
    "default": DEFAULT_SPEC,
    "unigrams": {**DEFAULT_SPEC, "word_ngrams": [1, 1]},
    "trigrams, 1/n": {**DEFAULT_SPEC, "word_ngrams": [1, 3], "weighting": "1/n"},
    "no unigrams, no chars": {**DEFAULT_SPEC, "word_ngrams": [2, 3], "char_ngrams": [0, 0]},
    "small": {**DEFAULT_SPEC, "buckets": 1 << 10, "max_ids": 40, "min_length": 4, "max_token_chars": 6},
}


def reference(spec_dict: dict, text: str) -> tuple[np.ndarray, np.ndarray]:
    spec = FeaturizerSpec.from_dict(spec_dict)
    normal = unicodedata.normalize("NFKC", text).lower()
    toks = [tok[: spec.max_token_chars] for tok in re.findall(spec.token_pattern, normal)[: spec.max_tokens]]
    raw: list[int] = []
    for i, tok in enumerate(toks):
        if spec.word_ngrams[0] == 1:
            raw.append(bucket_of("w", tok, spec.buckets))
        lo, hi = spec.char_ngrams
        if hi:
            marked = spec.char_boundary[0] + tok + spec.char_boundary[1]
            for n in range(lo, min(hi, len(marked)) + 1):
                raw.extend(bucket_of("c", marked[j : j + n], spec.buckets) for j in range(len(marked) - n + 1))
        for n in range(max(spec.word_ngrams[0], 2), spec.word_ngrams[1] + 1):
            if i + 1 >= n:
                raw.append(bucket_of("w", " ".join(toks[i + 1 - n : i + 1]), spec.buckets))
    del raw[spec.max_ids :]
    ids = np.array(raw, dtype=np.int64)
    if not raw:
        return ids, np.zeros(0, np.float32)
    weight = 1.0 / (np.sqrt(len(raw)) if spec.weighting == "1/sqrt(n)" else len(raw))
    return ids, np.full(len(raw), weight, dtype=np.float32)


def reference_batch(spec: dict, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    feats = [reference(spec, t) for t in texts]
    width = padded_length(max((len(i) for i, _ in feats), default=0), spec["min_length"])
    ids = np.zeros((len(feats), width), dtype=np.int64)
    weights = np.zeros((len(feats), width), dtype=np.float32)
    for row, (i, w) in enumerate(feats):
        ids[row, : len(i)] = i
        weights[row, : len(w)] = w
    return ids, weights


def _same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert g.tobytes() == w.tobytes()  # bit for bit, in order
        assert g.flags.writeable


@pytest.mark.parametrize("name", SPECS)
def test_corners_match_the_reference_one_by_one_and_in_batches(name):
    spec = SPECS[name]
    featurizer = Featurizer(spec)
    for text in CORNERS:
        _same(featurizer.features(text), reference(spec, text))
        _same(featurizer.batch([text]), reference_batch(spec, [text]))
    _same(featurizer.batch(CORNERS), reference_batch(spec, CORNERS))
    _same(featurizer.batch([]), reference_batch(spec, []))
    # a second pass reads the memoised windows and must not differ
    _same(featurizer.batch(CORNERS[::-1]), reference_batch(spec, CORNERS[::-1]))


def test_real_texts_match_the_reference():
    dev = shared_data("goemotions-ekman", "dev.tsv")
    texts = [line.split("\t", 1)[0] for line in dev.read_text(encoding="utf-8").splitlines()[:1500]]
    for name in ("default", "trigrams, 1/n"):
        featurizer = Featurizer(SPECS[name])
        for start in range(0, len(texts), 50):
            chunk = texts[start : start + 50]
            _same(featurizer.batch(chunk), reference_batch(SPECS[name], chunk))
        for text in texts[:200]:
            _same(featurizer.features(text), reference(SPECS[name], text))


def test_caches_stay_bounded_and_evicted_entries_come_back_the_same(monkeypatch):
    monkeypatch.setattr(featurizer_module, "WORD_CACHE", 32)
    monkeypatch.setattr(featurizer_module, "WINDOW_CACHE", 64)
    featurizer = Featurizer(DEFAULT_SPEC)
    texts = [f"token{i} and token{i + 1} again" for i in range(300)]
    for _ in range(2):
        _same(featurizer.batch(texts), reference_batch(DEFAULT_SPEC, texts))
    assert featurizer._position.cache_info().currsize == 64
    assert featurizer._word.cache_info().currsize == 32
