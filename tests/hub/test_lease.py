"""The rounds driver's lease, its fencing and the shared rate-limit buckets, on both stores
(hub/lease.py, hub/store/*_replicas.py); the replica-failure test with real processes is
tests/e2e/test_replicas.py."""

from __future__ import annotations

import threading
import time

import pytest

from hub.lease import ROUNDS_LEASE, FencedStore, Holder, Lease, LeaseLost
from hub.store.base import Fence, RunRecord, Store


def _run(run_id: str = "r-1", status: str = "running") -> RunRecord:
    return RunRecord(run_id, "funnel", status, {"rounds": 1}, "1", 1.0, 1.0, 100.0)


def test_one_holder_at_a_time_and_tokens_only_grow(any_store: Store) -> None:
    first = any_store.acquire_lease("l", "a", 5.0)
    assert first is not None
    assert any_store.acquire_lease("l", "b", 5.0) is None  # held
    held = any_store.get_lease("l")
    assert held is not None and (held.holder, held.token) == ("a", first) and 0 < held.ttl_s <= 5.0
    assert any_store.renew_lease("l", "a", first, 5.0)
    assert not any_store.renew_lease("l", "b", first, 5.0)  # only the holder
    assert not any_store.release_lease("l", "a", first + 1)  # only with its token
    assert any_store.release_lease("l", "a", first)
    assert any_store.get_lease("l") is None
    second = any_store.acquire_lease("l", "b", 5.0)
    assert second is not None and second > first
    assert not any_store.renew_lease("l", "a", first, 5.0)


def test_an_expired_lease_is_taken_and_the_old_token_fenced_off(any_store: Store) -> None:
    old = any_store.acquire_lease("l", "a", 1.0)
    assert old is not None
    assert any_store.put_run_fenced(_run(), Fence("l", old))
    time.sleep(1.1)
    assert any_store.get_lease("l") is None
    assert not any_store.renew_lease("l", "a", old, 5.0)  # compare-and-extend: gone is gone
    # expired but nobody took it: the old holder's write still lands (no one else drives)
    assert any_store.put_run_fenced(_run(status="exporting"), Fence("l", old))
    new = any_store.acquire_lease("l", "b", 5.0)
    assert new is not None and new > old
    assert not any_store.put_run_fenced(_run(status="failed"), Fence("l", old))
    assert not any_store.put_round_fenced("r-1", 1, {"round": 1}, Fence("l", old))
    assert any_store.put_round_fenced("r-1", 1, {"round": 1}, Fence("l", new))
    stored = any_store.get_run("r-1")
    assert stored is not None and stored.status == "exporting"
    assert any_store.list_rounds("r-1") == [{"round": 1}]
    assert not any_store.put_run_fenced(_run(), Fence("l", 0))  # a replica that never held it
    assert not any_store.put_run_fenced(_run(), Fence("other", new))  # another lease's token


def test_a_dead_holder_named_is_replaced_at_once(any_store: Store) -> None:
    first = any_store.acquire_lease("l", "dead", 60.0)
    assert any_store.acquire_lease("l", "b", 60.0, replace="someone-else") is None
    token = any_store.acquire_lease("l", "b", 60.0, replace="dead")
    assert first is not None and token is not None and token > first
    lease = any_store.get_lease("l")
    assert lease is not None and lease.holder == "b"


def test_racing_replicas_draw_one_holder(any_store: Store) -> None:
    wins: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: wins.append(any_store.acquire_lease("race", f"h{i}", 30.0) or 0))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([w for w in wins if w]) == 1


def test_lease_object_takes_over_from_a_dead_process_on_this_host(any_store: Store) -> None:
    me = Holder.this_process("http://127.0.0.1:1")
    ghost = Holder(me.host, 2**22 + 12345, "deadbeef", "http://127.0.0.1:2")  # no such pid
    assert Holder.parse(str(ghost)) == ghost
    assert any_store.acquire_lease(ROUNDS_LEASE, str(ghost), 60.0) is not None
    elsewhere = Lease(any_store, ROUNDS_LEASE, Holder("other-host", me.pid, "x", "http://h:1"), 60.0)
    assert not elsewhere.try_acquire()  # another host cannot see whether the ghost lives
    lease = Lease(any_store, ROUNDS_LEASE, me, 60.0)
    assert lease.try_acquire() and lease.held and lease.renew()
    fenced = FencedStore(any_store, lease).as_store()
    fenced.put_run(_run())
    assert fenced.get_run("r-1") == _run()  # reads go straight through
    assert elsewhere.fence() is None  # never held it: nothing to fence (it writes no runs, hub/driver.py)
    lease.release()
    assert lease.fence() == Fence(ROUNDS_LEASE, lease.token)  # a late write after losing it stays fenced
    assert any_store.acquire_lease(ROUNDS_LEASE, "successor", 60.0) is not None
    with pytest.raises(LeaseLost):
        fenced.put_run(_run(status="failed"))
    assert fenced.get_run("r-1") == _run() and not lease.held


def test_rate_bucket_is_shared_and_refills(any_store: Store) -> None:
    levels = [any_store.spend_rate_token("wrong_credentials", "10.0.0.1", 3, 10.0) for _ in range(4)]
    assert levels[0] == pytest.approx(2.0, abs=0.1)
    assert levels[-1] < 1.0  # empty: the address is refused on every replica
    assert any_store.spend_rate_token("wrong_credentials", "10.0.0.2", 3, 10.0) == pytest.approx(2.0, abs=0.1)
    time.sleep(0.35)  # 10 a second: three tokens back
    assert any_store.spend_rate_token("wrong_credentials", "10.0.0.1", 3, 10.0) >= 1.5
