"""The privacy officer's report of one node: what it stores, what left it, the DP budget,
refusals, erasures, retention runs and whether the audit log verifies.

:func:`build_report` returns plain JSON (``nexus audit report --format json`` and the
edge's ``GET /v1/privacy/audit``); :func:`render_html` turns it into one self-contained
page with an inline SVG chart (no scripts, no external resources).
The sections map to a GDPR Art. 30 record of processing as described in docs/privacy.md.
"""

from __future__ import annotations

import html
import sqlite3
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_worker.audit import dp_budget
from edge_worker.audit.log import ERASURE, HUB_KEY, REFUSAL, RETENTION, SEND, AuditError, AuditReader, Entry
from edge_worker.audit.verify import verify
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.heads import utc_now
from nexus_wire.payloads import FLOWER_APP, FLOWER_CHANNEL, MASKED_UPDATE, MODEL_UPDATE

FORMAT = "nexus-audit-report/1"
#: column names taken as a row's creation time, in order of preference
TIME_COLUMNS = ("created_at", "created", "inserted_at", "received_at", "timestamp", "ts", "time")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_RECENT = 50
_MAX_FILES = 500


def _iso(value: Any) -> Any:
    """Epoch seconds (how the edge store keeps time) as ISO 8601; other values unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return value


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------- inventory


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def _tables(path: Path) -> list[dict[str, Any]]:
    """Every table of a SQLite file: columns, rows, oldest row when a time column exists.
    Generic on purpose: the node's stores define their own schemas."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        out = []
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({quoted})")]
            time_column = next((c for c in TIME_COLUMNS if c in columns), None)
            rows = conn.execute(f"SELECT COUNT(*) FROM {quoted}").fetchone()[0]
            oldest = conn.execute(f'SELECT MIN("{time_column}") FROM {quoted}').fetchone()[0] if time_column else None
            out.append({"table": name, "columns": columns, "rows": rows, "time_column": time_column, "oldest": oldest})
        return out
    except sqlite3.DatabaseError as exc:
        return [{"table": None, "error": str(exc)}]
    finally:
        conn.close()


def inventory(data_dir: Path, retention_days: float | None) -> dict[str, Any]:
    data_dir = Path(data_dir)
    files, databases = [], []
    audit_db = EdgeDataDir(data_dir).audit_db
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file())[:_MAX_FILES]:
        rel = str(path.relative_to(data_dir))
        try:  # workers replace files as they go (metrics snapshots, temp files)
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        sqlite = _is_sqlite(path)
        files.append({"path": rel, "bytes": size, "sqlite": sqlite})
        if not sqlite:
            continue
        tables = _tables(path)
        for table in tables:
            oldest = _epoch(table.get("oldest"))
            table["oldest"] = _iso(table.get("oldest"))
            # The audit log is the record of processing itself and is kept, not retained-away.
            table["beyond_retention"] = bool(
                retention_days is not None
                and path != audit_db
                and oldest is not None
                and oldest < time.time() - retention_days * 86400
            )
        databases.append({"path": rel, "tables": tables})
    return {"files": files, "databases": databases, "retention_days": retention_days}


# ---------------------------------------------------------------- log sections


def egress(entries: Iterable[Entry], receipts: dict[int, str]) -> dict[str, Any]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        if entry.event != SEND:
            continue
        group = groups.setdefault(
            (entry.channel, entry.destination),
            {
                "channel": entry.channel,
                "destination": entry.destination,
                "messages": 0,
                "bytes": 0,
                "receipts": 0,
                "first": entry.time,
                "last": entry.time,
                "kinds": {},
            },
        )
        group["messages"] += 1
        group["bytes"] += entry.bytes
        group["receipts"] += entry.id in receipts
        group["last"] = entry.time
        group["kinds"][entry.kind] = group["kinds"].get(entry.kind, 0) + 1
    rows = sorted(groups.values(), key=lambda g: (g["channel"], g["destination"]))
    totals = {key: sum(g[key] for g in rows) for key in ("messages", "bytes", "receipts")}
    return {"by_channel": rows, "totals": totals}


def _brief(entry: Entry) -> dict[str, Any]:
    return {
        "entry": entry.id,
        "time": entry.time,
        "channel": entry.channel,
        "destination": entry.destination,
        "kind": entry.kind,
        "reason": entry.reason,
        "summary": entry.summary,
    }


def _section(entries: list[Entry]) -> dict[str, Any]:
    return {"count": len(entries), "recent": [_brief(e) for e in entries[-_RECENT:]]}


def refused_apps(refusals: list[Entry]) -> dict[str, Any]:
    """The Flower tasks the app guard refused (federated/app_guard.py): which run, which FAB."""
    apps = [e for e in refusals if e.kind == FLOWER_APP]
    recent = [
        {
            "entry": e.id,
            "time": e.time,
            "run": e.summary.get("run"),
            "task": e.summary.get("task"),
            "fab_sha256": e.summary.get("fab_sha256"),
            "reason": e.reason,
        }
        for e in apps[-_RECENT:]
    ]
    return {"count": len(apps), "fabs": sorted({str(e.summary.get("fab_sha256")) for e in apps}), "recent": recent}


def secure_aggregation(sends: list[Entry]) -> dict[str, Any]:
    """Which Flower runs sent their updates masked by SecAgg+ (the hub saw only their sum) and
    which sent them as they are: per run, the masked updates, the protocol's threshold and size,
    and the replies per stage (federated/secure_aggregation.py)."""
    runs: dict[Any, dict[str, Any]] = {}
    unmasked: dict[Any, int] = {}
    for entry in sends:
        if entry.channel != FLOWER_CHANNEL:
            continue
        run = entry.summary.get("run")
        if entry.kind == MODEL_UPDATE:
            unmasked[run] = unmasked.get(run, 0) + 1
        protocol = entry.summary.get("secure_aggregation")
        if not isinstance(protocol, dict):
            continue
        view = runs.setdefault(
            run,
            {"run": run, "protocol": protocol.get("protocol"), "masked_updates": 0, "bytes": 0, "stages": {}},
        )
        view["bytes"] += entry.bytes
        view["masked_updates"] += entry.kind == MASKED_UPDATE
        view["stages"][entry.kind] = view["stages"].get(entry.kind, 0) + 1
        if "threshold" in protocol:  # the setup stage: the round's parameters
            view.update(nodes=protocol.get("sample_num"), threshold=protocol.get("threshold"))
        view.setdefault("first", entry.time)
        view["last"] = entry.time
    return {
        "used": bool(runs),
        "runs": list(runs.values())[-_RECENT:],
        "unmasked_runs": [{"run": run, "updates": n} for run, n in unmasked.items()][-_RECENT:],
    }


def _rows(entry: Entry) -> dict[str, int]:
    rows = entry.summary.get("rows")
    return {str(k): n for k, n in rows.items() if isinstance(n, int)} if isinstance(rows, dict) else {}


def _rows_deleted(entries: list[Entry]) -> int:
    return sum(n for e in entries for n in _rows(e).values())


# ---------------------------------------------------------------- report


def build_report(
    data_dir: Path,
    node_key: Ed25519PublicKey | None = None,
    hub_key: Ed25519PublicKey | None = None,
    retention_days: float | None = None,
) -> dict[str, Any]:
    """The whole report as JSON-ready data. ``node_key`` defaults to the key file in the
    data dir; ``retention_days`` to the value of the newest retention run."""
    data_dir = Path(data_dir)
    report: dict[str, Any] = {"format": FORMAT, "generated_at": utc_now(), "data_dir": str(data_dir)}
    try:
        reader = AuditReader(data_dir)
        entries = list(reader.entries())
        receipts = reader.receipts()
        head = reader.tree_head()
    except AuditError as exc:
        entries, receipts, head = [], {}, None
        report["audit_log_error"] = str(exc)
    by_event = {event: [e for e in entries if e.event == event] for event in (REFUSAL, ERASURE, RETENTION, HUB_KEY)}
    retention_runs = by_event[RETENTION]
    if retention_days is None and retention_runs:
        retention_days = retention_runs[-1].summary.get("retention_days")

    report["inventory"] = inventory(data_dir, retention_days)
    report["egress"] = egress(entries, receipts)
    report["privacy_budget"] = dp_budget.read_summary(data_dir)
    report["refusals"] = _section(by_event[REFUSAL])
    report["refused_apps"] = refused_apps(by_event[REFUSAL])
    report["secure_aggregation"] = secure_aggregation([e for e in entries if e.event == SEND])
    report["erasures"] = {**_section(by_event[ERASURE]), "rows_deleted": _rows_deleted(by_event[ERASURE])}
    report["retention"] = {
        **_section(retention_runs),
        "rows_deleted": _rows_deleted(retention_runs),
        "last_run": retention_runs[-1].time if retention_runs else None,
    }
    report["hub_keys"] = [e.summary.get("key_id") for e in by_event[HUB_KEY]]
    report["tree_head"] = (
        None
        if head is None
        else {
            "size": head.size,
            "root": head.root,
            "time": head.time,
            "key_id": head.key_id,
            "signature": head.signature,
        }
    )
    report["verification"] = _verification(data_dir, node_key, hub_key, "audit_log_error" in report)
    return report


def _verification(
    data_dir: Path, node_key: Ed25519PublicKey | None, hub_key: Ed25519PublicKey | None, no_log: bool
) -> dict[str, Any]:
    if no_log:
        return {"ok": False, "reason": "no readable audit log"}
    try:
        return verify(data_dir, node_key, hub_key).as_dict()
    except AuditError as exc:
        return {"ok": False, "reason": str(exc)}


# ---------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _bytes(count: int) -> str:
    n = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def bar_chart(rows: list[dict[str, Any]]) -> str:
    """Horizontal bars of bytes per channel and destination, as inline SVG."""
    if not rows:
        return "<p>Nothing left this node.</p>"
    label_w, bar_w, row_h = 320, 360, 26
    top = max(r["bytes"] for r in rows) or 1
    height = row_h * len(rows) + 10
    parts = [
        f'<svg class="chart" role="img" aria-label="bytes sent per channel and destination" '
        f'xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 110}" height="{height}">'
    ]
    for i, r in enumerate(rows):
        y = 5 + i * row_h
        w = max(1, round(bar_w * r["bytes"] / top))
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_e(r["channel"])} → {_e(r["destination"])}</text>'
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 8}" fill="#3b6ea8">'
            f"<title>{r['bytes']} bytes</title></rect>"
        )
        parts.append(f'<text x="{label_w + w + 6}" y="{y + 17}">{_e(_bytes(r["bytes"]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _counts(rows: Any) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(rows.items())) if isinstance(rows, dict) else _e(rows)


def _table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td colspan=99>none</td></tr>'}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.ok{color:#11692e;font-weight:bold}.bad{color:#a11;font-weight:bold}
.chart text{font:12px system-ui,sans-serif;fill:#222}code{font-size:.85em;word-break:break-all}
"""


def _secure_html(secure: dict[str, Any]) -> str:
    runs = secure["runs"]
    lead = (
        f"<p>{len(runs)} Flower runs sent their updates masked (SecAgg+): the hub could read only their sum.</p>"
        if secure["used"]
        else "<p>No Flower run used secure aggregation on this node.</p>"
    )
    masked = _table(
        ["run", "nodes", "threshold", "masked updates", "bytes", "replies per stage", "first", "last"],
        [
            (
                r["run"],
                r.get("nodes"),
                r.get("threshold"),
                r["masked_updates"],
                r["bytes"],
                _counts(r["stages"]),
                r.get("first"),
                r.get("last"),
            )
            for r in runs
        ],
    )
    unmasked = _table(["run", "unmasked updates"], [(r["run"], r["updates"]) for r in secure["unmasked_runs"]])
    return f"{lead}{masked}<p>Runs whose updates left unmasked (the hub saw each one):</p>{unmasked}"


def render_html(report: dict[str, Any]) -> str:
    v = report["verification"]
    status = (
        (
            f'<p class="ok">Audit log verified: {v["entries"]} entries, {v["tree_heads"]} signed tree heads, '
            f"{v['receipts']} hub receipts.</p>"
        )
        if v.get("ok")
        else (
            f'<p class="bad">Audit log does NOT verify: entry {_e(v.get("first_bad_entry"))}: {_e(v.get("reason"))}</p>'
        )
    )
    inv = report["inventory"]
    table_rows = [
        (
            db["path"],
            t.get("table"),
            t.get("rows"),
            t.get("oldest"),
            "yes" if t.get("beyond_retention") else "no",
            ", ".join(t.get("columns", [])),
        )
        for db in inv["databases"]
        for t in db["tables"]
    ]
    eg = report["egress"]
    budget = report["privacy_budget"]
    budget_html = (
        "<p>No differential-privacy budget is set up on this node.</p>"
        if budget is None
        else _table(
            ["epsilon budget", "epsilon spent", "epsilon remaining", "delta", "rounds", "accountant"],
            [
                (
                    budget["epsilon_budget"] if budget["epsilon_budget"] is not None else "unlimited",
                    f"{budget['epsilon_spent']:.4f}",
                    "" if budget["epsilon_remaining"] is None else f"{budget['epsilon_remaining']:.4f}",
                    budget["delta"],
                    budget["rounds"],
                    budget["accountant"],
                )
            ],
        )
    )
    head = report["tree_head"] or {}
    sections = [
        f"<h1>Privacy audit report</h1><p>Data dir <code>{_e(report['data_dir'])}</code>, "
        f"generated {_e(report['generated_at'])}.</p>",
        "<h2>1. Verification</h2>",
        status,
        f"<p>Latest signed tree head: size {_e(head.get('size'))}, root <code>{_e(head.get('root'))}</code>, "
        f"time {_e(head.get('time'))}, node key {_e(head.get('key_id'))}.</p>",
        "<h2>2. Data inventory</h2>",
        "<p>Retention limit: "
        f"{_e(inv['retention_days'] if inv['retention_days'] is not None else 'unknown (no retention run logged)')}"
        " days.</p>",
        _table(["database", "table", "rows", "oldest row", "older than retention", "columns"], table_rows),
        _table(
            ["file", "bytes", "SQLite"], [(f["path"], f["bytes"], "yes" if f["sqlite"] else "no") for f in inv["files"]]
        ),
        "<h2>3. Egress ledger</h2>",
        f"<p>{eg['totals']['messages']} messages, {_e(_bytes(eg['totals']['bytes']))}, "
        f"{eg['totals']['receipts']} with a hub receipt.</p>",
        bar_chart(eg["by_channel"]),
        _table(
            ["channel", "destination", "messages", "bytes", "receipts", "first", "last", "kinds"],
            [
                (
                    g["channel"],
                    g["destination"],
                    g["messages"],
                    g["bytes"],
                    g["receipts"],
                    g["first"],
                    g["last"],
                    ", ".join(f"{k}: {n}" for k, n in sorted(g["kinds"].items())),
                )
                for g in eg["by_channel"]
            ],
        ),
        "<h2>4. Privacy budget</h2>",
        budget_html,
        "<h2>5. Refusals</h2>",
        f"<p>{report['refusals']['count']} refusals "
        "(undeclared payloads at the egress gateway, rounds over the privacy budget).</p>",
        _table(
            ["entry", "time", "channel", "destination", "kind", "reason"],
            [
                (r["entry"], r["time"], r["channel"], r["destination"], r["kind"], r["reason"])
                for r in report["refusals"]["recent"]
            ],
        ),
        f"<p>{report['refused_apps']['count']} Flower tasks refused by the app guard "
        "(apps whose FAB the pinned hub key did not sign; none of their code ran).</p>",
        _table(
            ["entry", "time", "run", "FAB sha256", "reason"],
            [(r["entry"], r["time"], r["run"], r["fab_sha256"], r["reason"]) for r in report["refused_apps"]["recent"]],
        ),
        "<h2>6. Erasures</h2>",
        f"<p>{report['erasures']['count']} visitor erasures, {report['erasures']['rows_deleted']} rows deleted. "
        "Visitors appear only as keyed hashes.</p>",
        _table(
            ["entry", "time", "visitor (keyed hash)", "rows deleted"],
            [
                (r["entry"], r["time"], r["summary"].get("visitor"), _counts(r["summary"].get("rows")))
                for r in report["erasures"]["recent"]
            ],
        ),
        "<h2>7. Retention runs</h2>",
        f"<p>{report['retention']['count']} runs, {report['retention']['rows_deleted']} rows deleted, "
        f"last {_e(report['retention']['last_run'])}.</p>",
        _table(
            ["entry", "time", "cutoff", "rows deleted"],
            [
                (r["entry"], r["time"], r["summary"].get("cutoff"), _counts(r["summary"].get("rows")))
                for r in report["retention"]["recent"]
            ],
        ),
        "<h2>8. Secure aggregation</h2>",
        _secure_html(report["secure_aggregation"]),
    ]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Nexus Edge privacy audit</title>'
        f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n"
    )
