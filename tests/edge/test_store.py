"""The local store: WAL SQLite, retention, erasure by visitor, the read interface for local training."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from starlette.testclient import TestClient

from edge_worker.app import create_app
from edge_worker.store import LocalStore
from nexus_tools.examples import SESSION
from nexus_wire.datadir import EdgeDataDir
from tests.support.edge import edge_settings
from tests.support.metrics import sample

DAY = 86400.0
LABELS = ["anger", "joy", "neutral"]


def test_store_is_wal_and_keeps_rows_across_reopening(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data")
    assert store.journal_mode() == "wal"
    store.add_feedback("so glad", ["joy", "joy"], visitor_id="v1")
    store.add_feedback("hmm", ["neutral", "anger"])
    store.add_outcome(SESSION, converted=False, visitor_id="v2")
    store.close()

    again = LocalStore(EdgeDataDir(tmp_path / "data").store)
    texts, matrix = again.emotion_examples(LABELS)
    assert texts == ["so glad", "hmm"]
    assert matrix.dtype.name == "float32" and matrix.tolist() == [[0, 1, 0], [1, 0, 1]]
    sessions, converted = again.funnel_examples()
    assert sessions == [SESSION] and converted.tolist() == [0.0]
    again.close()


def test_labels_unknown_to_the_reader_are_left_out(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.add_feedback("wow", ["surprise", "joy"])
    texts, matrix = store.emotion_examples(LABELS)
    assert texts == ["wow"] and matrix.tolist() == [[0, 1, 0]]


def test_retention_and_erasure_remove_exactly_their_rows(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    now = time.time()
    store.add_feedback("old", ["joy"], visitor_id="a", now=now - 40 * DAY)
    store.add_outcome(SESSION, True, visitor_id="b", now=now - 31 * DAY)
    store.add_feedback("recent", ["joy"], visitor_id="a", now=now - 1 * DAY)
    store.add_outcome(SESSION, False, visitor_id="a", now=now)
    assert store.purge_older_than(30, now=now) == 2
    assert store.counts() == {"feedback": 1, "funnel_outcome": 1}
    assert store.erase_visitor("b") == 0
    assert store.erase_visitor("a") == 2
    assert store.counts() == {"feedback": 0, "funnel_outcome": 0}


def test_the_node_enforces_retention_when_it_starts_and_on_schedule(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path, retention_days=1, retention_interval_s=0.1)
    store = LocalStore(settings.data_dir)
    store.add_feedback("stale", ["joy"], now=time.time() - 2 * DAY)
    with TestClient(create_app(settings)) as client:
        assert store.counts()["feedback"] == 0
        # a row that ages past the limit while the node runs goes at the next pass
        store.add_feedback("ageing", ["joy"], now=time.time() - DAY + 0.3)
        deadline = time.monotonic() + 5
        while store.counts()["feedback"]:
            assert time.monotonic() < deadline, "retention never ran again"
            time.sleep(0.05)
        assert sample(client.get("/metrics").text, "nexus_edge_store_rows_erased_total", reason="retention") == 2
    store.close()


def test_the_database_holds_what_was_posted_and_nothing_else(tmp_path: Path) -> None:
    settings = edge_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        client.post("/v1/emotion", json={"text": "scoring a text stores nothing"})
        client.post("/v1/funnel/score", json={"session": SESSION})
        client.post("/v1/feedback", json={"text": "kept", "labels": ["joy"]})
    with sqlite3.connect(EdgeDataDir(settings.data_dir).store) as db:
        assert db.execute("SELECT text FROM feedback").fetchall() == [("kept",)]
        assert db.execute("SELECT COUNT(*) FROM funnel_outcome").fetchone() == (0,)
