"""One suite, both stores: SQLite (embedded default) and Redis (real server)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from hub.store.base import NodeCheck, NodeRecord, Store, VersionRecord


def _version(model: str, version: str) -> VersionRecord:
    return VersionRecord(
        model, version, {"name": model, "version": version, "files": {}}, {"alg": "ed25519"}, "ab" * 32, 3, 1.0
    )


def test_meta_first_writer_wins(any_store: Store) -> None:
    assert any_store.claim_meta("hub_key_id", "k1") == "k1"
    assert any_store.claim_meta("hub_key_id", "k2") == "k1"


def test_enroll_token_is_one_time_and_expires(any_store: Store) -> None:
    any_store.add_enroll_token("h1", {"region": "3"}, expires_at=100.0)
    any_store.add_enroll_token("h2", {}, expires_at=100.0)
    assert any_store.take_enroll_token("h1", now=50.0) == {"region": "3"}
    assert any_store.take_enroll_token("h1", now=50.0) is None
    assert any_store.take_enroll_token("h2", now=150.0) is None
    assert any_store.take_enroll_token("unknown", now=0.0) is None


def test_enroll_token_taken_once_under_concurrency(any_store: Store) -> None:
    any_store.add_enroll_token("race", {"a": "1"}, expires_at=1e12)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(any_store.take_enroll_token("race", 0.0))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_nodes_and_heartbeats(any_store: Store) -> None:
    any_store.add_node(NodeRecord("n-2", "s2", {"region": "2"}, 2.0))
    any_store.add_node(NodeRecord("n-1", "s1", {"region": "1"}, 1.0))
    assert [n.node_id for n in any_store.list_nodes()] == ["n-1", "n-2"]
    any_store.record_heartbeat("n-1", 5.0, {"health": "ok", "models": {"funnel": "2"}})
    any_store.record_heartbeat("ghost", 5.0, {"health": "ok"})
    node = any_store.get_node("n-1")
    assert node is not None and node.last_seen == 5.0 and node.heartbeat == {"health": "ok", "models": {"funnel": "2"}}
    assert node.tags == {"region": "1"} and node.secret_hash == "s1"
    assert any_store.get_node("ghost") is None
    assert any_store.get_node("n-2").last_seen is None


def test_versions_insert_once_and_sort_numerically(any_store: Store) -> None:
    for v in ("1", "10", "2"):
        assert any_store.add_version(_version("funnel", v))
    assert not any_store.add_version(_version("funnel", "2"))
    assert [r.version for r in any_store.list_versions("funnel")] == ["1", "2", "10"]
    assert any_store.get_version("funnel", "10") == _version("funnel", "10")
    assert any_store.get_version("funnel", "3") is None
    # the store holds records only: a new version's archive is in the blob store
    assert any_store.open_inline_archive("funnel", "2") is None
    any_store.add_version(_version("emotion", "1"))
    assert any_store.list_models() == ["emotion", "funnel"]


def test_a_node_credential_is_checked_in_one_call(any_store: Store) -> None:
    any_store.add_node(NodeRecord("n-1", "s1", {"region": "1"}, 1.0))
    any_store.add_node(NodeRecord("n-2", "s2", {}, 2.0))
    any_store.revoke_node("n-2", 3.0)

    async def checks() -> list[NodeCheck]:
        try:
            return [
                await any_store.check_node(n, s) for n, s in (("n-1", "s1"), ("n-1", "s2"), ("n-2", "s2"), ("x", "s"))
            ]
        finally:
            await any_store.aclose()

    ok, wrong, revoked, nobody = asyncio.run(checks())
    assert ok.status == "ok" and ok.node is not None and ok.node.tags == {"region": "1"}
    assert (wrong, revoked, nobody) == (NodeCheck("unknown"), NodeCheck("revoked"), NodeCheck("unknown"))


def _beat(seen: list[object], count: int) -> Callable[[dict[str, Any] | None], tuple[dict[str, Any], int]]:
    def update(previous: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
        seen.append((count, previous))  # a store may call it more than once: the last call counts
        return {"count": count}, count

    return update


def test_heartbeats_build_on_the_stored_one_even_after_another_writer(any_store: Store) -> None:
    any_store.add_node(NodeRecord("n-1", "s1", {}, 1.0))
    seen: list[object] = []

    async def beats() -> list[object]:
        try:
            out: list[object] = [await any_store.heartbeat_node("n-1", "s1", 5.0, _beat(seen, 1))]
            out.append(await any_store.heartbeat_node("n-1", "s1", 6.0, _beat(seen, 2)))
            # another replica (or an older hub) writes in between: the next one builds on that
            await anyio.to_thread.run_sync(any_store.record_heartbeat, "n-1", 7.0, {"count": 30})
            out.append(await any_store.heartbeat_node("n-1", "s1", 8.0, _beat(seen, 4)))
            out.append(await any_store.heartbeat_node("n-1", "bad", 9.0, _beat(seen, 5)))
            out.append(await any_store.heartbeat_node("ghost", "s1", 9.0, _beat(seen, 6)))
            return out
        finally:
            await any_store.aclose()

    assert asyncio.run(beats()) == [("ok", 1), ("ok", 2), ("ok", 4), ("unknown", None), ("unknown", None)]
    built_on = dict(seen)  # the last call of each heartbeat: the one stored
    assert built_on[1] is None and built_on[2] == {"count": 1} and built_on[4] == {"count": 30}
    node = any_store.get_node("n-1")
    assert node is not None and node.heartbeat == {"count": 4} and node.last_seen == 8.0
    any_store.revoke_node("n-1", 10.0)
    assert asyncio.run(_one_beat(any_store)) == ("revoked", None)


async def _one_beat(store: Store) -> tuple[str, object]:
    try:
        return await store.heartbeat_node("n-1", "s1", 11.0, _beat([], 9))
    finally:
        await store.aclose()


def test_rollout_log(any_store: Store) -> None:
    a = any_store.add_action("funnel", "stable", "1", {}, 100, 1.0)
    b = any_store.add_action("funnel", "assign", "2", {"region": "2"}, 10, 2.0)
    other = any_store.add_action("emotion", "stable", "1", {}, 100, 3.0)
    assert b.action_id > a.action_id and other.model == "emotion"
    actions = any_store.list_actions("funnel")
    assert [(x.kind, x.version, x.selector, x.percent, x.active) for x in actions] == [
        ("stable", "1", {}, 100, True),
        ("assign", "2", {"region": "2"}, 10, True),
    ]
    assert any_store.deactivate_action("funnel", b.action_id)
    assert not any_store.deactivate_action("funnel", b.action_id)
    assert not any_store.deactivate_action("funnel", other.action_id)  # another model's action
    assert [x.active for x in any_store.list_actions("funnel")] == [True, False]


def test_ping(any_store: Store) -> None:
    any_store.ping()


def test_federated_runs_and_rounds(any_store: Store) -> None:
    from hub.store.base import RunRecord

    run = RunRecord(
        "r-1", "funnel", "running", {"rounds": 2}, "1", 10.0, 10.0, 100.0, flower_run_id=7, score_name="roc_auc"
    )
    later = RunRecord("r-2", "emotion", "starting", {"rounds": 1}, "3", 20.0, 20.0, 200.0)
    any_store.put_run(later)
    any_store.put_run(run)
    assert [r.run_id for r in any_store.list_runs()] == ["r-1", "r-2"]  # oldest first
    any_store.put_run(
        RunRecord(**{**run.__dict__, "status": "finished", "version": "2", "participants": [5, 9], "rounds_done": 2})
    )
    got = any_store.get_run("r-1")
    # an older record's Flower ids (numbers) read as the strings newer records hold
    assert got is not None and got.status == "finished" and got.version == "2" and got.participants == ["5", "9"]
    assert any_store.get_run("r-404") is None
    for n in (10, 2, 1):
        any_store.put_round("r-1", n, {"round": n, "loss": 0.5})
    any_store.put_round("r-1", 2, {"round": 2, "loss": 0.25})  # copied again: replaced, not doubled
    assert [(r["round"], r["loss"]) for r in any_store.list_rounds("r-1")] == [(1, 0.5), (2, 0.25), (10, 0.5)]
    assert any_store.list_rounds("r-2") == []
