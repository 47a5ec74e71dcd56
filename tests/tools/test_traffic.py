"""The traffic generator of ``nexus demo`` (nexus_tools/traffic.py): synthetic and replayed sessions and texts."""

from __future__ import annotations

import numpy as np

from nexus_tools.examples import SESSION
from nexus_tools.traffic import grammar_texts, replay_sessions, replay_texts, synthetic_sessions
from tests.support.env import shared_data


def test_synthetic_sessions_have_the_schema_and_a_region_dependent_propensity() -> None:
    rng = np.random.default_rng(7)
    by_region = {region: synthetic_sessions(3000, region, rng) for region in (1, 3)}
    rates = {region: np.mean([o.converted for o in rows]) for region, rows in by_region.items()}
    assert 0.05 < rates[3] < rates[1] < 0.35, rates
    for region, rows in by_region.items():
        assert all(set(o.session) == set(SESSION) and o.session["Region"] == region for o in rows)


def test_grammar_texts_use_only_labels_the_model_knows() -> None:
    texts = grammar_texts(200, ["joy", "anger", "neutral"], np.random.default_rng(1))
    assert {label for _, labels in texts for label in labels} == {"joy", "anger", "neutral"}
    assert len({text for text, _ in texts}) > 50  # a grammar, not three canned lines


def test_replay_routes_sessions_by_region_and_names_text_labels() -> None:
    data = shared_data()
    routed = replay_sessions(data, 3, 50, np.random.default_rng(0))
    assert [len(rows) for rows in routed] == [50, 50, 50]
    for edge, rows in enumerate(routed):
        assert all(int(o.session["Region"]) % 3 == edge for o in rows)
    texts = replay_texts(data, 30, np.random.default_rng(0))
    labels = set((data / "goemotions-ekman" / "labels.txt").read_text().split())
    assert len(texts) == 30 and all(names and set(names) <= labels for _, names in texts)
