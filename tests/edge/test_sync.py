"""The edge sync agent against a real hub on 127.0.0.1 (a stand-in for the repository)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_worker.audit import REFUSAL, AuditLog, AuditReader
from edge_worker.egress import HubGateway, HubUnreachable
from edge_worker.hub_link import HubLink
from edge_worker.identity import load_identity
from edge_worker.payloads import PayloadRefused
from edge_worker.sync import Backoff, SyncAgent
from nexus_service.keyfiles import load_signing_key
from nexus_tools.processes import free_port
from nexus_wire.datadir import EdgeDataDir, HubDataDir
from nexus_wire.payloads import BUNDLE_DOWNLOAD
from tests.support.edge import StandInRepository, sync_agent
from tests.support.hub import RunningHub, make_bundle, store_forged


def _sync(agent: SyncAgent) -> dict[str, str]:
    async def once() -> dict[str, str]:
        try:
            return await agent.sync_once()
        finally:
            await agent.link.aclose()

    return asyncio.run(once())


def _push_and_stabilise(hub: RunningHub, tmp_path: Path) -> None:
    hub.admin.push(make_bundle(tmp_path, "funnel", "1", b"v1"))
    hub.admin.promote("funnel", "1", "stable")


def test_enroll_install_assign_rollback_and_restart(hub: RunningHub, tmp_path: Path) -> None:
    _push_and_stabilise(hub, tmp_path)
    edge, repo = tmp_path / "edge", StandInRepository(tmp_path / "edge" / "models")
    token = hub.admin.create_token({"region": "2"})["token"]
    assert _sync(sync_agent(hub.url, edge, repo, token)) == {"funnel": "1"}
    assert repo.served == {"funnel": "1"}
    assert EdgeDataDir(edge).identity.stat().st_mode & 0o777 == 0o600
    assert EdgeDataDir(edge).sync_state.stat().st_mode & 0o777 == 0o600
    identity = load_identity(edge)
    assert identity is not None and identity.tags == {"region": "2"}

    hub.admin.push(make_bundle(tmp_path, "funnel", "2", b"v2"))
    hub.admin.assign("funnel", "2", {"region": "2"})
    # a restarted agent: no token any more, identity and state come from the data dir
    assert _sync(sync_agent(hub.url, edge, repo)) == {"funnel": "2"}
    [node] = hub.admin.nodes()
    assert node["node_id"] == identity.node_id and node["heartbeat"]["models"] == {"funnel": "1"}
    assert node["heartbeat"]["audit_ok"] is None  # not verified yet: not reported
    agent = sync_agent(hub.url, edge, repo)
    assert asyncio.run(agent.verify_audit()).ok
    assert _sync(agent) == {}  # 304: nothing to do
    beat = hub.admin.nodes()[0]["heartbeat"]
    assert beat["models"] == {"funnel": "2"}
    # the audit log's figures reach the hub: the enrollment, heartbeats, polls and downloads sent so far
    assert beat["bytes_sent"] > 0 and beat["audit_entries"] > 5
    assert beat["audit_ok"] is True and beat["audit_verified_at"] == agent.audit_check.verified_at

    hub.admin.rollback("funnel")
    assert _sync(sync_agent(hub.url, edge, repo)) == {"funnel": "1"}
    assert repo.activations == [("funnel", "1"), ("funnel", "2"), ("funnel", "1")]

    # restart while the hub is down: the hub's last choice is served again at once
    restarted = StandInRepository(repo.root)
    agent = sync_agent(f"http://127.0.0.1:{free_port()}", edge, restarted)
    asyncio.run(agent.follow())
    assert restarted.served == {"funnel": "1"}
    with pytest.raises(HubUnreachable):
        _sync(agent)
    assert restarted.served == {"funnel": "1"}


@pytest.mark.parametrize("fault", ["flipped-byte", "wrong-signature"])
def test_tampered_or_wrongly_signed_bundle_is_refused_old_model_kept(
    hub: RunningHub, tmp_path: Path, fault: str
) -> None:
    _push_and_stabilise(hub, tmp_path)
    edge, repo = tmp_path / "edge", StandInRepository(tmp_path / "edge" / "models")
    agent = sync_agent(hub.url, edge, repo, hub.admin.create_token({"region": "1"})["token"])
    _sync(agent)
    if fault == "flipped-byte":
        key = load_signing_key(HubDataDir(hub.data_dir).signing_key)
        store_forged(hub.store, hub.data_dir, tmp_path, "2", key, flip=True)
    else:
        store_forged(hub.store, hub.data_dir, tmp_path, "2", Ed25519PrivateKey.generate(), flip=False)
    hub.admin.promote("funnel", "2", "stable")

    agent = sync_agent(hub.url, edge, repo)
    assert _sync(agent) == {}
    assert repo.served == {"funnel": "1"} and not (repo.root / "funnel" / "2").exists()
    assert agent.stats.refusals == 1
    assert agent.state.refused["funnel"]["version"] == "2"
    assert ("sha256 mismatch" if fault == "flipped-byte" else "signature does not verify") in agent.state.refused[
        "funnel"
    ]["reason"]
    if fault == "wrong-signature":
        # refused on the manifest's signature, before any artifact was fetched
        assert agent.link.gateway.messages[BUNDLE_DOWNLOAD] == 2
    assert not list(EdgeDataDir(edge).staging.iterdir())

    # the refusal is remembered across restarts (no download loop) and reported to the hub
    again = sync_agent(hub.url, edge, repo)
    assert _sync(again) == {} and again.link.gateway.messages[BUNDLE_DOWNLOAD] == 0
    assert hub.admin.nodes()[0]["heartbeat"]["bundle_refusals"] == 1

    # a good version afterwards installs normally
    hub.admin.push(make_bundle(tmp_path, "funnel", "3", b"v3"))
    hub.admin.promote("funnel", "3", "stable")
    assert _sync(sync_agent(hub.url, edge, repo)) == {"funnel": "3"}


def test_unreachable_hub_backs_off_with_jitter_and_keeps_serving(tmp_path: Path) -> None:
    backoff = Backoff(base_s=0.5, max_s=8.0)
    rng = random.Random(1)
    for failures, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (30, 8.0)):
        delays = [backoff.delay(failures, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, so edges do not stampede a returning hub

    repo = StandInRepository(tmp_path / "models")
    repo.served = {"funnel": "1"}
    agent = SyncAgent(
        HubLink.open(f"http://127.0.0.1:{free_port()}", tmp_path / "edge", timeout=1.0),
        repo.root,
        repo.activate,
        repo.status,
        enroll_token="x" * 43,
        backoff=Backoff(0.02, 0.05),
    )

    async def run_briefly() -> None:
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(0.6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await agent.link.aclose()

    asyncio.run(run_briefly())
    assert agent.stats.consecutive_failures >= 3 and agent.stats.sync_errors == agent.stats.consecutive_failures
    assert "127.0.0.1" in (agent.stats.last_error or "")
    assert repo.served == {"funnel": "1"}


def test_gateway_refuses_undeclared_payloads(tmp_path: Path) -> None:
    gateway = HubGateway(f"http://127.0.0.1:{free_port()}", AuditLog(tmp_path))
    with pytest.raises(PayloadRefused, match="free text"):
        asyncio.run(
            gateway._send(
                "heartbeat",
                "POST",
                "/v1/nodes/me/heartbeat",
                {"health": "ok", "models": {"funnel": "my name is Bob"}},
                authenticated=False,
            )
        )
    with pytest.raises(PayloadRefused, match="not declared"):
        asyncio.run(
            gateway._send("assignment-poll", "GET", "/v1/nodes/me/assignments", {"note": "x"}, authenticated=False)
        )
    with pytest.raises(PayloadRefused):
        asyncio.run(gateway._send("free-form", "POST", "/v1/x", {}, authenticated=False))
    with pytest.raises(PayloadRefused):
        asyncio.run(
            gateway._admit(
                BUNDLE_DOWNLOAD,
                "GET",
                "/v1/models/funnel/versions/1/files/..",
                {"model": "funnel", "version": "1", "name": "../../etc/passwd"},
            )
        )
    assert sum(gateway.messages.values()) == 0
    assert [e.kind for e in AuditReader(tmp_path).entries(REFUSAL)] == [
        "heartbeat",
        "assignment-poll",
        "free-form",
        BUNDLE_DOWNLOAD,
    ]
    asyncio.run(gateway.aclose())


def test_local_unsigned_copy_is_adopted_a_different_one_refused(hub: RunningHub, tmp_path: Path) -> None:
    import shutil

    shipped = make_bundle(tmp_path, "funnel", "1", b"shipped")
    hub.admin.push(shipped)
    hub.admin.promote("funnel", "1", "stable")
    edge, repo = tmp_path / "edge", StandInRepository(tmp_path / "edge" / "models")
    shutil.copytree(shipped, repo.root / "funnel" / "1")  # the node was shipped with it, unsigned
    agent = sync_agent(hub.url, edge, repo, hub.admin.create_token({})["token"])
    assert _sync(agent) == {"funnel": "1"}
    assert (repo.root / "funnel" / "1" / "signature.json").is_file()
    assert agent.link.gateway.messages[BUNDLE_DOWNLOAD] == 2  # manifest + signature only

    other = make_bundle(tmp_path, "funnel", "2", b"local build")
    shutil.copytree(other, repo.root / "funnel" / "2")
    hub.admin.push(make_bundle(tmp_path, "funnel", "2", b"hub build"))
    hub.admin.promote("funnel", "2", "stable")
    agent = sync_agent(hub.url, edge, repo)
    assert _sync(agent) == {}
    assert "another bundle" in agent.state.refused["funnel"]["reason"] and repo.served == {"funnel": "1"}


def test_processes_sharing_a_data_dir_enroll_once_and_all_switch(hub: RunningHub, tmp_path: Path) -> None:
    """Two server processes of one node (``--workers 2``): one leader talks to the hub."""
    _push_and_stabilise(hub, tmp_path)
    edge = tmp_path / "edge"
    token = hub.admin.create_token({"region": "1"})["token"]
    repos = [StandInRepository(edge / "models") for _ in range(2)]
    agents = [
        SyncAgent(
            HubLink.open(hub.url, edge),
            r.root,
            r.activate,
            r.status,
            enroll_token=token,
            poll_interval_s=0.1,
            backoff=Backoff(0.05, 0.1),
        )
        for r in repos
    ]

    async def converge_on(version: str) -> None:
        for _ in range(200):
            if all(r.served == {"funnel": version} for r in repos):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"agents did not converge on {version}")

    async def scenario() -> None:
        tasks = [asyncio.create_task(a.run()) for a in agents]
        try:
            await converge_on("1")
            assert len(hub.admin.nodes()) == 1
            assert sum(a.stats.cycles > 0 for a in agents) == 1  # only the leader talks to the hub
            await asyncio.to_thread(hub.admin.push, make_bundle(tmp_path, "funnel", "2", b"v2"))
            await asyncio.to_thread(hub.admin.promote, "funnel", "2", "stable")
            await converge_on("2")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for agent in agents:
                await agent.link.aclose()

    asyncio.run(scenario())


def test_heartbeats_prove_the_log_consistent_with_the_head_the_hub_holds(hub: RunningHub, tmp_path: Path) -> None:
    edge = tmp_path / "edge"
    agent = sync_agent(
        hub.url, edge, StandInRepository(edge / "models"), hub.admin.create_token({"region": "1"})["token"]
    )
    held: list[int] = []

    async def cycles(n: int) -> None:
        try:
            for _ in range(n):
                await agent.sync_once()
                assert agent.hub_held is not None
                held.append(agent.hub_held.size)
        finally:
            await agent.link.aclose()

    asyncio.run(cycles(4))
    beat = hub.admin.nodes()[0]["heartbeat"]
    # the first head is held as it is; every later one only with its proof, so each answer moves on
    assert held == sorted(set(held)) and held[-1] == beat["audit_largest_head"]["size"] == beat["audit_head"]["size"]
    assert beat["audit_regression"] is None and "audit_consistency" not in beat
    beats = [e.summary for e in AuditReader(edge).entries() if e.kind == "heartbeat" and e.event == "send"]
    assert "audit_consistency" not in beats[0]  # nothing held yet: nothing to prove
    # the log keeps what each heartbeat proved: from the head the previous answer named
    assert [b["audit_consistency"]["first_size"] for b in beats[1:]] == held[:-1]
    assert all(b["audit_consistency"]["hashes"] >= 1 for b in beats[1:])
