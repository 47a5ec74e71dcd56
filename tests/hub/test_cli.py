"""``nexus hub ...`` operator commands against a real hub on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_cli import main
from tests.support.hub import RunningHub, make_bundle

# the CLI talks HTTP: one store under it is enough
pytestmark = pytest.mark.parametrize("store_kind", ["sqlite"])


def _nexus(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_operator_commands(
    hub: RunningHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEXUS_HUB_TOKEN", raising=False)
    op = ["--hub", hub.url, "--data-dir", str(hub.data_dir)]
    code, out, _ = _nexus(
        capsys, "hub", "models", "push", str(make_bundle(tmp_path, "funnel", "1", b"a")), *op, "--json"
    )
    assert code == 0 and json.loads(out)["version"] == "1"
    # tables by default: a header and one row per answer
    code, out, _ = _nexus(capsys, "hub", "models", "push", str(make_bundle(tmp_path, "funnel", "1", b"b")), *op)
    assert code == 0 and out.split("\n")[0].split() == ["MODEL", "VERSION", "NEW", "SHA256"]
    assert out.split("\n")[1].split()[:3] == ["funnel", "2", "yes"]
    code, out, _ = _nexus(capsys, "hub", "models", "promote", "funnel", "1", "--stage", "stable", *op)
    assert code == 0 and out.split("\n")[1].split() == ["1", "stable", "1", "-", "100"]
    code, out, _ = _nexus(
        capsys, "hub", "models", "assign", "funnel", "2", "--select", "region=3", "--percent", "10", *op, "--json"
    )
    assert code == 0 and json.loads(out)["select"] == {"region": "3"} and json.loads(out)["percent"] == 10
    code, out, _ = _nexus(capsys, "hub", "models", "list", *op)
    assert "funnel" in out and "1,2" in out
    code, out, _ = _nexus(capsys, "hub", "models", "show", "funnel", *op, "--json")
    assert [v["stage"] for v in json.loads(out)["versions"]] == ["stable", "canary"]
    assert len(out.splitlines()) == 1  # --json: the hub's whole answer, one line
    code, out, _ = _nexus(capsys, "hub", "models", "show", "funnel", *op)
    lines = out.splitlines()
    # the summary: a line per version and per rollout action, not the manifests
    assert code == 0 and lines[0] == "model funnel: stable version 1" and len(lines) <= 10, out
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "stable"], ["2", "canary"]]
    assert _nexus(capsys, "hub", "models", "rollback", "funnel", *op)[0] == 0

    monkeypatch.setenv("NEXUS_HUB_TOKEN", (hub.data_dir / "admin.token").read_text().strip())
    code, out, _ = _nexus(capsys, "hub", "token", "create", "--tags", "region=3,tier=gold", "--hub", hub.url)
    token = out.strip()
    assert code == 0 and len(token) >= 32
    assert hub.http.post("/v1/enroll", json={"token": token}).json()["tags"] == {"region": "3", "tier": "gold"}
    code, out, _ = _nexus(capsys, "hub", "nodes", "list", "--hub", hub.url)
    assert code == 0 and "region=3,tier=gold" in out and "offline" in out


def test_operator_errors_are_one_line(
    hub: RunningHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEXUS_HUB_TOKEN", raising=False)
    code, _, err = _nexus(capsys, "hub", "models", "list", "--hub", hub.url, "--token", "wrong")
    assert code == 2 and err.strip() == "nexus: error: hub answered 401: invalid token"
    code, _, err = _nexus(capsys, "hub", "models", "show", "nope", "--hub", hub.url, "--data-dir", str(hub.data_dir))
    assert code == 2 and "unknown model 'nope'" in err
    code, _, err = _nexus(capsys, "hub", "models", "list", "--hub", hub.url)
    assert code == 2 and "no admin token" in err
    code, _, err = _nexus(capsys, "hub", "token", "create", "--tags", "region", "--hub", hub.url, "--token", "x")
    assert code == 2 and "key=value" in err
