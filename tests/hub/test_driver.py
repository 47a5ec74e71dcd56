"""Two hub replicas in this process on one store (hub/driver.py, hub/replicas.py): one drives
rounds, the other copies what it published; a driver that stalls past its lease is fenced off
and steps down. The SuperLink is external here (``--superlink``), so no Flower process runs;
tests/e2e/test_replicas.py has the real processes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hub import replicas
from hub.auth import hash_secret, new_secret
from hub.driver import RoundsDriver
from hub.lease import LeaseLost
from hub.settings import HubSettings
from hub.state import Hub, build_hub
from hub.store.base import RunRecord, Store


def _replica(data_dir: Path, store: Store, port: int) -> Hub:
    settings = HubSettings(data_dir=data_dir, port=port, superlink="127.0.0.1:9", lease_ttl_s=1.0)
    return build_hub(settings, store)


def _run() -> RunRecord:
    return RunRecord("r-1", "funnel", "running", {"rounds": 1}, "1", 1.0, 1.0, 1e12)


def test_one_replica_drives_and_a_stalled_one_is_fenced_off(any_store: Store, tmp_path: Path) -> None:
    a, b = _replica(tmp_path / "hub", any_store, 8001), _replica(tmp_path / "hub", any_store, 8002)
    # two replicas in one process share a pid, which reads as an earlier life of the same
    # replica (a restarted container): B says it runs on another host
    b.lease.me = replace(b.lease.me, host="another-host")
    drive_a, drive_b = RoundsDriver(a), RoundsDriver(b)

    async def scenario() -> None:
        await drive_a.step()
        assert drive_a._opening is not None
        await drive_a._opening
        assert drive_a.driving and a.rounds.apps.apps  # it signed the app it submits
        await drive_b.step()
        assert not b.lease.held
        replicas.sync(b)  # the replica that does not drive answers with the driver's signed apps
        assert b.rounds.apps == a.rounds.apps
        a.rounds.store.put_run(_run())  # the driver's writes land

        time.sleep(1.1)  # A stalls past its TTL without renewing; B takes over
        await drive_b.step()
        assert b.lease.held and (b.lease.token or 0) > (a.lease.token or 0)
        with pytest.raises(LeaseLost):  # A's late write, made before it noticed
            a.rounds.store.put_run(replace(_run(), status="failed"))
        await drive_a.step()  # its renewal is refused: it steps down
        assert not drive_a.driving and not a.lease.held

    asyncio.run(scenario())
    stored = any_store.get_run("r-1")
    assert stored is not None and stored.status == "running"


def test_a_rotation_on_one_replica_retires_the_old_token_on_all(any_store: Store, tmp_path: Path) -> None:
    a = _replica(tmp_path / "hub", any_store, 8001)
    b = _replica(tmp_path / "hub", any_store, 8002)  # the same data dir: it reads the new file
    old = a.auth.admin_token
    new = new_secret()
    assert any_store.swap_meta("admin_token_sha256", hash_secret(old), hash_secret(new))
    (tmp_path / "hub" / "admin.token").write_text(new)
    replicas.sync(b)
    assert b.auth.admin_token == new
    # a replica whose token file still holds the old token refuses it and accepts the new one
    (tmp_path / "hub" / "admin.token").write_text(old)
    replicas.sync(a)
    assert a.auth.admin_token not in (old, new) and a.auth.require(f"Bearer {new}", "admin").role == "admin"
    with pytest.raises(Exception, match="invalid token"):
        a.auth.require(f"Bearer {old}", "admin")
