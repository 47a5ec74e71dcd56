"""The tables ``nexus hub nodes|models ...`` print (``--json`` prints the hub's answer instead)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub import audit_heads
from models.metrics import headline
from models.output import Table, View, when


def audit_column(beat: Mapping[str, Any]) -> str:
    """The node's audit head as the hub holds it; a regression first, it must not be missed."""
    regression = beat.get(audit_heads.REGRESSION)
    if regression:
        return f"{audit_heads.label(regression).upper()}: {audit_heads.describe(regression)}"
    head = beat.get(audit_heads.HEAD)
    return audit_heads.short(head) if head else "-"


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    rows = []
    for n in nodes:
        beat = n.get("heartbeat") or {}
        models = ",".join(f"{m}:{v}" for m, v in (beat.get("models") or {}).items())
        rows.append([n["node_id"], n["status"], n["tags"], models or None, audit_column(beat)])
    return Table(["NODE", "STATUS", "TAGS", "MODELS", "AUDIT"], rows)


def models_table(models: list[dict[str, Any]]) -> Table:
    return Table(
        ["MODEL", "STABLE", "CANARY", "VERSIONS"],
        [[m["model"], m["stable"], m["canary"], m["versions"]] for m in models],
    )


def model_views(show: dict[str, Any]) -> list[View]:
    """``models show``: one line per version and per rollout action (``--json``: everything)."""
    versions = Table(
        ["VERSION", "STAGE", "PUSHED", "PARENT", "SCORES", "SHA256"],
        [
            [
                v["version"],
                v["stage"],
                when(v.get("pushed_at")),
                v.get("parent_version"),
                headline(v.get("metrics") or {}),
                (v.get("archive_sha256") or "")[:12] or None,
            ]
            for v in show["versions"]
        ],
    )
    rollout = Table(
        ["ACTION", "KIND", "VERSION", "SELECT", "PERCENT", "CREATED", "ACTIVE"],
        [
            [a["id"], a["kind"], a["version"], a["selector"] or None, a["percent"], when(a["created_at"]), a["active"]]
            for a in show["rollout"]
        ],
    )
    views: list[View] = [f"model {show['model']}: stable version {show['stable'] or '-'}", versions]
    if show["rollout"]:
        views += ["", "rollout (newest last):", rollout]
    return views


def gate_lines(model: str, done: Mapping[str, Any]) -> list[str]:
    """What the promotion gate said of a promoted version (hub/promotion_gate.py); none for a pushed one."""
    gate = done.get("gate")
    if not gate:
        return []
    line = (
        f"promotion gate: {model} v{done['version']} {gate['candidate']:.4f} vs v{gate['baseline_version']} "
        f"{gate['baseline']:.4f} ({gate['delta']:+.4f}, {gate['verdict']}) on {gate['nodes']} node(s)' "
        f"evaluation data, round {gate['round']}"
    )
    return [line + (" - promoted with --force" if done.get("forced") else "")]


def action_table(action: Mapping[str, Any]) -> Table:
    """The rollout action a promote, assign or rollback made or undid."""
    return Table(
        ["ACTION", "KIND", "VERSION", "SELECT", "PERCENT"],
        [
            [
                action["action"],
                action["kind"],
                action["version"],
                action.get("select", action.get("selector")) or None,
                action.get("percent"),
            ]
        ],
    )


def push_table(result: Mapping[str, Any]) -> Table:
    return Table(
        ["MODEL", "VERSION", "NEW", "SHA256"],
        [[result["model"], result["version"], result["created"], result["archive_sha256"][:12]]],
    )
