"""What each dashboard page shows, read from the store, the registry and the funnels and
rounds records. Blocking (run through ``store_call`` or ``offload``); returns plain dicts
the templates render."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from hub import audit_heads
from hub.api.funnels import experiment_view, results
from hub.bayes import withheld_rule
from hub.registry import resolve
from hub.state import Hub
from hub.store.base import ACTIVE_RUN_STATUSES
from nexus_wire.outcomes import LABELS

#: charted on the models page, in this order (manifest metric names of both families)
SCORE_METRICS = ("roc_auc", "macro_f1", "micro_f1", "accuracy", "log_loss")


# -- formatting ---------------------------------------------------------------------------
def ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    s = max(0.0, now - then)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.0f} d ago"


def iso(t: float | None) -> str:
    if t is None:
        return ""
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # a time stored before the hub bounded them
        return "?"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def nbytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "–"
    if abs(n) < 1024:
        return f"{n:,.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:,.1f} {unit}"
    return f"{n / 1024:,.1f} GB"


def flat_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Manifest metrics (``{split: {backend: {metric: value}}}`` or flat) as ``a/b/c -> value``."""
    out: dict[str, float] = {}
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, dict):
                out.update(flat_metrics(value, name))
            elif (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and not name.endswith("/n")
                and name != "n"
            ):
                out[name] = float(value)
    return out


# -- page data ---------------------------------------------------------------------------
def nodes_view(hub: Hub, now: float) -> list[dict[str, Any]]:
    store = hub.store
    models = store.list_models()
    active = {m: [a for a in store.list_actions(m) if a.active] for m in models}
    rows = []
    for node in sorted(store.list_nodes(), key=lambda n: (n.tags.get("region", ""), n.node_id)):
        beat = node.heartbeat or {}
        online = node.last_seen is not None and now - node.last_seen <= hub.settings.offline_after_s
        assigned = {m: v for m in models if (v := resolve(node, m, active[m])) is not None}
        loaded = dict(beat.get("models") or {})
        rows.append(
            {
                "node": node,
                "online": online and node.revoked_at is None,
                "revoked": node.revoked_at is not None,
                "health": beat.get("health", "–"),
                "loaded": loaded,
                "assigned": assigned,
                "pending": sorted(m for m, v in assigned.items() if loaded.get(m) != v),
                "request_rate": beat.get("request_rate"),
                "queue_depth": beat.get("queue_depth"),
                "bundle_refusals": beat.get("bundle_refusals", 0),
                "sync_errors": beat.get("sync_errors", 0),
                "last_seen_ago": ago(node.last_seen, now),
                "last_seen_iso": iso(node.last_seen),
            }
        )
    return rows


def score_series(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per quality metric across versions. A version's value is its reference
    backend's (onnx) when it has one, else the first split/backend that reports the metric,
    so a federated candidate (scored by the hub on numpy weights) sits beside its parent."""
    series = []
    for metric in SCORE_METRICS:
        data = []
        for v in versions:
            found = [(("/onnx/" not in k), k) for k in v["flat"] if k == metric or k.endswith("/" + metric)]
            data.append(v["flat"][min(found)[1]] if found else None)
        if any(x is not None for x in data):
            series.append({"label": metric, "data": data})
    return series


def models_view(hub: Hub) -> list[dict[str, Any]]:
    out = []
    for model in hub.store.list_models():
        shown = hub.registry.show(model)
        for v in shown["versions"]:
            v["flat"] = flat_metrics(v["metrics"])
            v["pushed_iso"] = iso(v["pushed_at"])
        chart = {"labels": [f"v{v['version']}" for v in shown["versions"]], "series": score_series(shown["versions"])}
        active = [a for a in shown["rollout"] if a["active"]]
        for a in shown["rollout"]:
            a["created_iso"] = iso(a["created_at"])
        out.append({**shown, "chart": chart, "last_active": active[-1] if active else None})
    return out


def privacy_view(hub: Hub, now: float) -> list[dict[str, Any]]:
    """What heartbeats say about each node's audit log and egress. The page reads
    ``bytes_sent`` and the ``audit_*`` fields (e.g. ``audit_verified_at``, ``audit_ok``,
    ``audit_entries``) as edges start reporting them; absent ones show as not reported.
    The newest tree head and a regression the hub recorded (hub/audit_heads.py) have their
    own column and warning row."""
    rows = []
    for node in sorted(hub.store.list_nodes(), key=lambda n: n.node_id):
        beat: dict[str, Any] = node.heartbeat or {}
        heads = (audit_heads.HEAD, audit_heads.LARGEST, audit_heads.REGRESSION)  # shown on their own
        audit = {
            k.removeprefix("audit_"): v
            for k, v in beat.items()
            if k.startswith("audit_") and v is not None and k not in heads
        }
        verified_at = audit.pop("verified_at", None)
        regression = beat.get(audit_heads.REGRESSION)
        rows.append(
            {
                "node": node,
                "last_seen_ago": ago(node.last_seen, now),
                "audit": audit,
                "verified_ago": ago(verified_at, now) if isinstance(verified_at, (int, float)) else None,
                "verified_iso": iso(verified_at) if isinstance(verified_at, (int, float)) else "",
                "bytes_sent": beat.get("bytes_sent"),
                "bundle_refusals": beat.get("bundle_refusals"),
                "head": beat.get(audit_heads.HEAD),
                "regression": None
                if not regression
                else {
                    **regression,
                    "text": audit_heads.describe(regression),
                    "label": audit_heads.label(regression),
                    "ago": ago(regression.get("at"), now),
                    "iso": iso(regression.get("at")),
                },
            }
        )
    return rows


def funnels_view(hub: Hub, now: float) -> list[dict[str, Any]]:
    """Every experiment, running ones first: results per variant and step, and its weights
    over time (each stored version of the experiment is one point)."""
    funnels = {f.id: f for f in hub.store.list_funnels()}
    records = sorted(hub.store.list_experiments(), key=lambda r: (str(r.experiment.status) != "running", -r.at))
    out = []
    for record in records:
        e = record.experiment
        funnel = funnels.get(e.funnel_id)
        steps = list(funnel.steps) if funnel else []
        shown = results(hub, e.id, now) if funnel is not None and str(e.status) != "draft" else None
        history = hub.store.experiment_history(e.id)
        view = {**experiment_view(record), "steps": steps, "results": shown, "updated_iso": iso(record.at)}
        if shown:
            view["withheld"] = withheld_rule(shown["min_group_size"])
            view["conversion"] = {
                "labels": steps,
                "series": [{"label": v["name"], "data": [s["rate"] for s in v["steps"]]} for v in shown["variants"]],
            }
        view["weights"] = {
            "labels": [f"v{r.experiment.version} {_clock(r.at)}" for r in history],
            "series": [
                {"label": name, "data": [r.experiment.weights.get(name) for r in history]} for name in e.variant_names
            ],
        }
        out.append(view)
    return out


def rounds_view(hub: Hub) -> list[dict[str, Any]]:
    """Runs newest first with their rounds (copied into the store by the hub's watcher)."""
    out = []
    for run in reversed(hub.store.list_runs()):
        rounds = hub.store.list_rounds(run.run_id)
        total = int(run.config.get("rounds", 0)) or max(run.rounds_done, 1)
        labels = [f"round {r.get('round')}" for r in rounds]
        out.append(
            {
                "run": run,
                "total": total,
                "rounds": rounds,
                "active": run.status in ACTIVE_RUN_STATUSES,
                "created_iso": iso(run.created_at),
                "updated_ago": ago(run.updated_at, hub.clock()),
                # why each node asked took no part, per round (nexus_wire/outcomes.py)
                "failures": [
                    {**f, "round": r.get("round"), "label": LABELS.get(f.get("kind", ""), f.get("kind"))}
                    for r in rounds
                    for f in r.get("failures") or []
                ],
                "bytes_in": sum(r.get("bytes_in") or 0 for r in rounds),
                "bytes_out": sum(r.get("bytes_out") or 0 for r in rounds),
                "quality": {
                    "labels": labels,
                    "series": [
                        {"label": run.score_name or "score", "data": [r.get("score") for r in rounds]},
                        {"label": "eval loss", "data": [r.get("loss") for r in rounds]},
                        {"label": "train loss", "data": [r.get("train_loss") for r in rounds]},
                    ],
                },
                "traffic": {
                    "labels": labels,
                    "series": [
                        {"label": "bytes to nodes", "data": [r.get("bytes_out") for r in rounds]},
                        {"label": "bytes from nodes", "data": [r.get("bytes_in") for r in rounds]},
                    ],
                },
            }
        )
    return out
