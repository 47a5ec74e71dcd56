"""Signed tree heads held elsewhere: what plain ``nexus audit verify`` cannot see (the newest
entries removed together with their heads) fails against ``--head``; the hub keeps the
largest head each node reported and flags a later shorter or different one."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import sqlite3
import subprocess
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import nexus_cli
from edge_worker.audit import AuditLog, AuditReader, ConsistencyProof, TreeHead, verify
from hub.client import OperatorClient
from nexus_tools.processes import free_port
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import key_id
from tests.support.audit import receipt_for, rewrite
from tests.support.hub import RunningHub, enroll_node
from tests.support.processes import NEXUS, EdgeProcess, HubProcess, wait_for

HUB = "http://127.0.0.1:8700"


def _filled(data_dir: Path, sends: int) -> dict[int, TreeHead]:
    """A hub-key pin and ``sends`` sends, every other one with a receipt; its signed heads by size."""
    hub_key = Ed25519PrivateKey.generate()
    with AuditLog(data_dir) as log:
        log.pin_hub_key(hub_key.public_key(), HUB)
        for i in range(sends):
            entry = log.record_send("sync", HUB, "heartbeat", json.dumps({"n": i}).encode(), {"health": "ok"})
            if i % 2 == 0:
                log.attach_receipt(entry.id, receipt_for(hub_key, entry))
    return AuditReader(data_dir).tree_heads()


def _truncate(data_dir: Path, keep: int) -> None:
    """Remove the newest entries *with* their heads and receipts, as someone with file access would."""
    conn = sqlite3.connect(EdgeDataDir(data_dir).audit_db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DELETE FROM entries WHERE id > ?", (keep,))
    conn.execute("DELETE FROM tree_heads WHERE size > ?", (keep,))
    conn.execute("DELETE FROM receipts WHERE entry_id > ?", (keep,))
    conn.execute("DELETE FROM subtrees WHERE (idx + 1) << level > ?", (keep,))  # the hashes over those entries
    conn.close()


def _write(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path


def _verify(capsys: pytest.CaptureFixture[str], data_dir: Path, *extra: str) -> tuple[int, str, str]:
    code = nexus_cli.main(["audit", "verify", "--data-dir", str(data_dir), *extra])
    out, err = capsys.readouterr()
    return code, out, err


# -- the officer: verify --head ------------------------------------------------------------------
def test_truncation_with_heads_passes_plain_verify_but_not_against_a_held_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    heads = _filled(node, 7)  # 8 entries
    report = tmp_path / "report.json"
    assert nexus_cli.main(["audit", "report", "--data-dir", str(node), "--format", "json", "--out", str(report)]) == 0
    assert json.loads(report.read_text())["tree_head"]["size"] == 8
    early = _write(tmp_path / "early.json", asdict(heads[5]))  # a bare head, as the hub holds it
    assert _verify(capsys, node, "--head", str(report))[0] == 0

    _truncate(node, keep=5)
    # the documented limitation: the remaining log is consistent with itself
    code, out, _ = _verify(capsys, node)
    assert code == 0 and "audit log intact: 5 entries" in out
    assert _verify(capsys, node, "--head", str(early))[0] == 0  # an older head: still covered
    code, _, err = _verify(capsys, node, "--head", str(report))
    assert code == 1
    assert (
        "audit log NOT intact: entry 6: entry missing: a tree head held elsewhere covers 8 entries, the log holds 5"
        in err
    )
    code, out, _ = _verify(capsys, node, "--head", str(_write(tmp_path / "bare.json", asdict(heads[8]))), "--json")
    assert code == 1 and json.loads(out)["first_bad_entry"] == 6


def test_a_log_rewritten_under_the_node_key_fails_at_the_held_heads_size(tmp_path: Path) -> None:
    heads = _filled(tmp_path, 7)
    _truncate(tmp_path, keep=5)
    with AuditLog(tmp_path) as log:  # the node's own key signs the replacement entries 6..8
        for i in range(3):
            log.record_send("sync", HUB, "heartbeat", b"rewritten %d" % i, {"health": "ok"})
    assert verify(tmp_path).ok  # every entry matches its (new) signed head
    result = verify(tmp_path, held_head=heads[8])
    assert not result.ok and result.first_bad == 8
    assert result.reason.startswith(
        f"the log is not consistent with the tree head held elsewhere (size 8, root {heads[8].root[:12]}"
    )
    assert result.reason.endswith("no consistency proof from it to the 8 entries the log holds verifies (rewritten)")
    assert verify(tmp_path, held_head=heads[6]).first_bad == 6
    assert verify(tmp_path, held_head=heads[5]).ok


def test_a_forged_or_foreign_head_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = tmp_path / "node"
    head = _filled(node, 3)[4]
    inflated = replace(head, size=9)  # claims more entries than the node ever signed
    code, _, err = _verify(
        capsys, node, "--head", str(_write(tmp_path / "forged.json", {"tree_head": asdict(inflated)}))
    )
    assert code == 1 and "audit log NOT intact: the tree head held elsewhere (size 9" in err
    assert "does not verify against the node key" in err

    other = Ed25519PrivateKey.generate()  # a well-formed head signed by someone else
    unsigned = replace(head, size=9, key_id=key_id(other.public_key()))
    foreign = replace(unsigned, signature=base64.b64encode(other.sign(unsigned.message())).decode())
    code, out, _ = _verify(capsys, node, "--head", str(_write(tmp_path / "foreign.json", asdict(foreign))), "--json")
    assert code == 1 and json.loads(out)["first_bad_entry"] is None and "forged" in json.loads(out)["reason"]


def test_an_unusable_head_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path, 1)
    code, _, err = _verify(capsys, tmp_path, "--head", str(tmp_path / "nope.json"))
    assert code == 2 and "cannot read tree head" in err and "No such file" in err
    (tmp_path / "garbage.json").write_text("{not json")
    code, _, err = _verify(capsys, tmp_path, "--head", str(tmp_path / "garbage.json"))
    assert code == 2 and "is not JSON" in err
    for bad in ({"tree_head": None}, {"size": "2", "root": "ab", "time": "t", "key_id": "k", "signature": "s"}, [1, 2]):
        code, _, err = _verify(capsys, tmp_path, "--head", str(_write(tmp_path / "bad.json", bad)))
        assert code == 2 and "holds no signed tree head" in err and "Traceback" not in err


# -- the hub: largest head per node, sticky regression ----------------------------------------
def _beat(
    hub: RunningHub, auth: dict[str, str], head: TreeHead | None, proof: ConsistencyProof | None = None
) -> dict[str, Any] | None:
    """One heartbeat with ``head`` (and ``proof`` to it); the head the hub answers it holds."""
    body: dict[str, Any] = {"health": "ok"} if head is None else {"health": "ok", "audit_head": asdict(head)}
    if proof is not None:
        body["audit_consistency"] = {"first_size": proof.first.size, "proof": proof.proof}
    reply = hub.http.post("/v1/nodes/me/heartbeat", json=body, headers=auth)
    assert reply.status_code == 200, reply.text
    return reply.json()["audit_held"]


def _held(hub: RunningHub, node_id: str) -> dict[str, Any]:
    [node] = [n for n in hub.admin.nodes() if n["node_id"] == node_id]
    return node["heartbeat"]


def test_the_hub_keeps_the_largest_head_and_flags_a_shorter_log(
    hub: RunningHub, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = _filled(tmp_path / "edge", 5)  # sizes 1..6
    reader = AuditReader(tmp_path / "edge")
    node_id, auth = enroll_node(hub)
    assert _beat(hub, auth, heads[3]) == {"size": 3, "root": heads[3].root}  # the first head: held as it is
    assert _beat(hub, auth, heads[6])["size"] == 3  # larger, but no proof from the held head: not held yet
    assert _beat(hub, auth, heads[6], reader.consistency_proof(3, 6)) == {"size": 6, "root": heads[6].root}
    beat = _held(hub, node_id)
    assert beat["audit_head"] == asdict(heads[6]) and beat["audit_largest_head"] == asdict(heads[6])
    assert beat["audit_regression"] is None

    with caplog.at_level(logging.WARNING, logger="nexus.hub"):
        _beat(hub, auth, heads[4])
    regression = _held(hub, node_id)["audit_regression"]
    assert regression["was"] == asdict(heads[6]) and regression["now"] == asdict(heads[4]) and regression["at"] > 0
    assert regression["kind"] == "shorter"
    assert f"node {node_id}: audit log went back: the hub held size 6, root {heads[6].root[:12]}" in caplog.text

    # sticky: the log growing past the old size does not clear it, nor does a second regression replace it
    _beat(hub, auth, heads[6])
    _beat(hub, auth, heads[2])
    beat = _held(hub, node_id)
    assert beat["audit_regression"] == regression and beat["audit_largest_head"] == asdict(heads[6])
    assert beat["audit_head"] == asdict(heads[2])
    # the officer verifies the node's log against the head the hub kept (here: still intact)
    assert _verify(capsys, tmp_path / "edge", "--head", str(_write(tmp_path / "held.json", regression["was"])))[0] == 0

    code = nexus_cli.main(["hub", "nodes", "list", "--hub", hub.url, "--data-dir", str(hub.data_dir)])
    out = capsys.readouterr().out
    assert code == 0 and f"REGRESSION: audit log went back: the hub held size 6, root {heads[6].root[:12]}" in out


def test_the_hub_flags_another_root_at_the_same_size_and_an_emptied_log(hub: RunningHub, tmp_path: Path) -> None:
    ours, theirs = _filled(tmp_path / "a", 3), _filled(tmp_path / "b", 3)
    node_id, auth = enroll_node(hub)
    _beat(hub, auth, ours[4])
    _beat(hub, auth, theirs[4])
    regression = _held(hub, node_id)["audit_regression"]
    assert (regression["was"]["root"], regression["now"]["root"]) == (ours[4].root, theirs[4].root)
    assert regression["kind"] == "different-root"

    other, auth = enroll_node(hub)
    _beat(hub, auth, None)  # never reported a head: nothing to compare
    assert _held(hub, other)["audit_regression"] is None
    _beat(hub, auth, ours[2])
    _beat(hub, auth, None)  # reported one, now none: the log was emptied
    assert _held(hub, other)["audit_regression"]["now"] is None


def _rewritten_copy(source: Path, target: Path, grow: int) -> dict[int, TreeHead]:
    """``source``'s log with entry 2 changed and every head re-signed under the node's key,
    then grown by ``grow`` entries: it verifies on its own. Its signed heads by size."""
    shutil.copytree(source, target)
    rewrite(target, 2, destination="http://elsewhere.example")
    with AuditLog(target) as log:
        for i in range(grow):
            log.record_send("sync", HUB, "heartbeat", b"later %d" % i, {"health": "ok"})
    assert verify(target).ok
    return AuditReader(target).tree_heads()


def test_the_hub_holds_a_larger_head_only_with_a_proof_and_flags_a_rewritten_log(
    hub: RunningHub, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    held = _filled(tmp_path / "edge", 3)[4]
    heads = _rewritten_copy(tmp_path / "edge", tmp_path / "rewritten", grow=5)  # sizes 1..9
    rewritten = AuditReader(tmp_path / "rewritten")
    node_id, auth = enroll_node(hub)
    assert _beat(hub, auth, held)["size"] == 4
    # a proof from a size the hub does not hold proves nothing to it: ignored, nothing held
    assert _beat(hub, auth, heads[7], rewritten.consistency_proof(3, 7))["size"] == 4
    assert _held(hub, node_id)["audit_regression"] is None and "audit_consistency" not in _held(hub, node_id)

    with caplog.at_level(logging.WARNING, logger="nexus.hub"):
        answer = _beat(hub, auth, heads[9], rewritten.consistency_proof(4, 9))
    assert answer == {"size": 4, "root": held.root}  # still the held head: the node is asked to prove from it again
    regression = _held(hub, node_id)["audit_regression"]
    assert regression["kind"] == "inconsistent"
    assert regression["was"] == asdict(held) and regression["now"] == asdict(heads[9])
    assert f"node {node_id}: audit log rewritten: the node reported size 9" in caplog.text
    # sticky, even when the node proves something true later
    _beat(hub, auth, heads[9], rewritten.consistency_proof(4, 9))
    assert _held(hub, node_id)["audit_regression"] == regression

    code = nexus_cli.main(["hub", "nodes", "list", "--hub", hub.url, "--data-dir", str(hub.data_dir)])
    out = capsys.readouterr().out
    assert (
        code == 0 and f"INCONSISTENT: audit log rewritten: the node reported size 9, root {heads[9].root[:12]}" in out
    )
    # the officer, with the head the hub held: the rewritten log is not consistent with it
    code, _, err = _verify(
        capsys, tmp_path / "rewritten", "--head", str(_write(tmp_path / "was.json", regression["was"]))
    )
    assert code == 1 and "entry 4: the log is not consistent with the tree head held elsewhere (size 4" in err


def test_an_untouched_growing_log_is_held_at_each_proven_head(hub: RunningHub, tmp_path: Path) -> None:
    heads = _filled(tmp_path, 9)  # sizes 1..10
    reader = AuditReader(tmp_path)
    node_id, auth = enroll_node(hub)
    held = _beat(hub, auth, heads[1])
    for size in (2, 3, 5, 8, 10, 10):
        assert held is not None
        proof = reader.consistency_proof(held["size"], size) if size > held["size"] else None
        held = _beat(hub, auth, heads[size], proof)
        assert held == {"size": size, "root": heads[size].root}
    assert _held(hub, node_id)["audit_regression"] is None


BAD_PROOFS = [
    ({"first_size": 2, "proof": ["ab" * 32] * 129}, "audit_consistency.proof"),  # longer than any real proof
    ({"first_size": 2, "proof": ["AB" * 32]}, "audit_consistency.proof.0"),
    ({"first_size": 2, "proof": ["ab" * 31]}, "audit_consistency.proof.0"),
    ({"first_size": 0, "proof": []}, "audit_consistency.first_size"),
    ({"first_size": "2", "proof": []}, "audit_consistency.first_size"),
    ({"first_size": 2, "proof": [], "note": "x"}, "audit_consistency.note"),
    ({"first_size": 3, "proof": []}, "body"),  # not smaller than the head's size
]


def test_the_hub_refuses_a_malformed_proof(hub: RunningHub, tmp_path: Path) -> None:
    head = asdict(_filled(tmp_path, 2)[3])
    node_id, auth = enroll_node(hub)
    for consistency, where in BAD_PROOFS:
        body = {"health": "ok", "audit_head": head, "audit_consistency": consistency}
        reply = hub.http.post("/v1/nodes/me/heartbeat", json=body, headers=auth)
        assert reply.status_code == 422 and reply.json()["error"].startswith(where), (consistency, reply.text)
    reply = hub.http.post(
        "/v1/nodes/me/heartbeat",
        json={"health": "ok", "audit_consistency": {"first_size": 1, "proof": []}},
        headers=auth,
    )
    assert reply.status_code == 422 and "audit_consistency" in reply.json()["error"]
    assert _held(hub, node_id) is None


MALFORMED = [
    ({"root": "my name is Bob" + "0" * 50}, "audit_head.root"),
    ({"signature": "B" * 86 + "=="}, "audit_head.signature"),  # 64 bytes end in [AQgw]==
    ({"signature": "A" * 88}, "audit_head.signature"),  # 66 bytes
    ({"key_id": "node-of-bob"}, "audit_head.key_id"),
    ({"time": "yesterday"}, "audit_head.time"),
    ({"size": "5"}, "audit_head.size"),
    ({"size": 0}, "audit_head.size"),
    ({"note": "free text"}, "audit_head.note"),
]


def test_the_hub_refuses_a_malformed_head(hub: RunningHub, tmp_path: Path) -> None:
    head = asdict(_filled(tmp_path, 1)[2])
    node_id, auth = enroll_node(hub)
    for change, where in MALFORMED:
        reply = hub.http.post(
            "/v1/nodes/me/heartbeat", json={"health": "ok", "audit_head": {**head, **change}}, headers=auth
        )
        assert reply.status_code == 422 and reply.json()["error"].startswith(where + ":"), (change, reply.text)
    assert _held(hub, node_id) is None or _held(hub, node_id).get("audit_head") is None


# -- a real hub and a real edge ------------------------------------------------------------------
def _nexus_verify(data_dir: Path, head: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NEXUS, "audit", "verify", "--data-dir", str(data_dir), "--head", str(head)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_real_hub_holds_the_edges_head_and_flags_its_truncated_log(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub", free_port(), "--no-superlink", "--poll-interval", "0.5")
    admin = OperatorClient(hub.url, (tmp_path / "hub" / "admin.token").read_text().strip())
    edge = EdgeProcess(tmp_path / "edge", hub.url, admin.create_token({"region": "1"})["token"])
    data_dir = edge.root / "data"
    try:

        def beat() -> dict[str, Any]:
            nodes = admin.nodes()
            return (nodes[0]["heartbeat"] or {}) if nodes else {}

        # a few sync cycles (heartbeat, assignment and funnel-config polls each add entries)
        wait_for(
            lambda: (beat().get("audit_head") or {}).get("size", 0) >= 12,
            timeout=90,
            what="the hub holding a head of 12+",
        )
        held = beat()["audit_largest_head"]
        proc = _nexus_verify(data_dir, _write(tmp_path / "held.json", held))
        assert proc.returncode == 0, proc.stderr  # the hub's copy is the node's own signed head

        edge.stop()
        _truncate(data_dir, keep=3)
        edge.start(None)  # same data dir: same identity, a log cut back to 3 entries
        wait_for(
            lambda: beat().get("audit_regression") is not None and beat().get("audit_ok") is True,
            timeout=90,
            what="the hub flagging the regression after the edge's own verification passed",
        )
        regression = beat()["audit_regression"]
        assert regression["was"]["size"] >= held["size"] and regression["now"]["size"] < regression["was"]["size"]
        assert "audit log went back" in hub.log.read_text()

        # the officer, with the head the hub kept: the first entry the node no longer holds
        proc = _nexus_verify(data_dir, _write(tmp_path / "was.json", regression["was"]))
        assert proc.returncode == 1 and "a tree head held elsewhere" in proc.stderr, proc.stderr

        # sticky: still flagged once the log has grown past the size the hub held
        wait_for(
            lambda: beat()["audit_head"]["size"] > regression["was"]["size"], timeout=90, what="the log growing back"
        )
        assert beat()["audit_regression"] == regression
        page = httpx.Client(base_url=hub.url)
        assert (
            page.post(
                "/dashboard/login", data={"token": (tmp_path / "hub" / "admin.token").read_text().strip()}
            ).status_code
            == 303
        )
        assert "audit regression" in page.get("/dashboard/privacy").text
        page.close()
    finally:
        edge.stop()
        admin.close()
        hub.stop()
