"""``--superlink auto``: the edge joins the SuperLink its hub names (edge_worker/federation.py),
handed over on the node's HubLink (edge_worker/hub_link.py).
The whole path (hub heartbeat reply -> sync agent -> SuperNode) runs in ``nexus demo``'s test."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from edge_worker.federation import AUTO, _target
from edge_worker.hub_link import HubLink
from edge_worker.supernode import SuperNode, SuperNodeConfig, node_config_arg
from hub.settings import HubSettings
from models.errors import NexusError
from nexus_wire.datadir import EdgeDataDir

NO_HUB = "http://127.0.0.1:9"


def test_the_link_keeps_only_a_well_formed_address_and_remembers_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        link = HubLink.open(NO_HUB, tmp_path)
        assert link.superlink is None
        for bad in (None, 9092, "", "no-port", "host:port", "a b:9092", "x" * 300 + ":1", "127.0.0.1:9092; rm -rf /"):
            assert await link.name_superlink(bad) is False
        assert not EdgeDataDir(tmp_path).superlink.exists()
        assert await link.name_superlink("127.0.0.1:9092") is True
        assert await link.name_superlink("127.0.0.1:9092") is False  # unchanged: not rewritten
        assert link.superlink == "127.0.0.1:9092"
        assert await link.name_superlink("[::1]:9100") is True and link.superlink == "[::1]:9100"
        await link.aclose()
        restarted = HubLink.open(NO_HUB, tmp_path)  # e.g. while the hub is down
        assert restarted.superlink == "[::1]:9100"
        await restarted.aclose()

    asyncio.run(scenario())


def test_the_federation_job_hears_of_a_new_superlink_without_polling(tmp_path: Path) -> None:
    async def scenario() -> None:
        link = HubLink.open(NO_HUB, tmp_path)
        waiting = asyncio.create_task(link.wait_for_change(60.0))
        await asyncio.sleep(0)
        assert await link.name_superlink("127.0.0.1:9092")
        await asyncio.wait_for(waiting, 5.0)
        await link.aclose()

    asyncio.run(scenario())


def test_one_process_of_a_node_leads(tmp_path: Path) -> None:
    async def scenario() -> None:
        first, second = HubLink.open(NO_HUB, tmp_path), HubLink.open(NO_HUB, tmp_path)
        assert first.lead() and first.leading
        assert not second.lead() and not second.leading
        await first.aclose()  # the leader went away: a follower takes over
        assert second.lead()
        await second.aclose()

    asyncio.run(scenario())


def test_auto_joins_only_a_loopback_superlink(caplog: pytest.LogCaptureFixture) -> None:
    assert _target("10.0.0.5:9092", None) == "10.0.0.5:9092"  # given explicitly: the operator's choice
    assert _target(AUTO, None) is None  # the hub has not named one yet
    assert _target(AUTO, "localhost:9092") == "localhost:9092"
    with caplog.at_level(logging.ERROR, logger="nexus.edge.supernode"):
        assert _target(AUTO, "superlink.example:9092") is None
    assert "not on loopback" in caplog.text


def test_the_hub_names_the_superlink_edges_should_join(tmp_path: Path) -> None:
    assert HubSettings(data_dir=tmp_path).superlink_address() is None
    assert HubSettings(data_dir=tmp_path, superlink_port=9092).superlink_address() == "127.0.0.1:9092"
    assert (
        HubSettings(data_dir=tmp_path, superlink="sl:9092", superlink_public="sl.example:443").superlink_address()
        == "sl.example:443"
    )


def test_auto_joins_a_superlink_off_loopback_over_tls_only() -> None:
    assert _target(AUTO, "superlink.example:9092", tls=True) == "superlink.example:9092"


def test_the_supernode_runs_no_app_itself_and_its_guard_trusts_the_pinned_key(tmp_path: Path) -> None:
    """``--isolation process``: Flower launches no ClientApp; the guard beside it, holding the
    SuperExec secret, launches only those the pinned hub key signed (federated/app_guard.py)."""
    ca, key = tmp_path / "ca.crt", tmp_path / "supernode-region-1"
    node = SuperNode(SuperNodeConfig("sl.example:9092", tmp_path, port=9500, root_certificates=ca, auth_key=key))
    cmd = node.command()
    flag = {name: cmd[cmd.index(name) + 1] for name in ("--isolation", "--superexec-auth-secret-file", "--port")}
    assert flag == {
        "--isolation": "process",
        "--superexec-auth-secret-file": str(EdgeDataDir(tmp_path).superexec_secret),
        "--port": "9500",
    }
    assert "--insecure" not in cmd and cmd[cmd.index("--root-certificates") + 1] == str(ca)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key)
    node.guard.parent_pid = 4242
    guard = node.guard.command()
    assert guard[guard.index("-m") + 1 :][:2] == ["federated.app_guard", "clientapp"]
    assert guard[guard.index("--runtime-api-address") + 1] == "127.0.0.1:9500"
    assert guard[guard.index("--edge-data-dir") + 1] == str(tmp_path)
    assert guard[guard.index("--superexec-auth-secret-file") + 1] == flag["--superexec-auth-secret-file"]
    assert guard[guard.index("--parent-pid") + 1] == "4242"


def test_the_node_config_names_the_hub_assigned_id_last(tmp_path: Path) -> None:
    arg = node_config_arg(tmp_path, {"region": "3", "nexus-node": "n-ffffffffffffffff"}, "n-0123456789abcdef")
    assert arg == f'data-dir="{tmp_path.resolve()}" region="3" nexus-node="n-0123456789abcdef"'  # no tag poses as it
    assert "nexus-node" not in node_config_arg(tmp_path, {"region": "3"})
    with pytest.raises(NexusError, match="hub-assigned"):
        node_config_arg(tmp_path, {}, 'n-1" data-dir="/etc')
