"""The hub's funnel HTTP API: funnels and experiments (operator), the config edges pull and
the counters they push (nodes), results, and the Thompson weight updater.

Paths and JSON shapes are documented in docs/funnels.md (the dashboard reads them).
Every experiment change goes through ``Store.update_experiment``, a compare-and-set on the
version that also keeps one running experiment per funnel, so hub replicas racing on a
start or a Thompson update never both win.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.auth import AuthError, Principal
from hub.bayes import experiment_results, noise_seed_for, thompson_weights
from hub.counters import experiment_totals, overflowing
from hub.funnel_config import (
    Allocation,
    Experiment,
    Funnel,
    FunnelConfigError,
    Status,
)
from hub.funnel_schemas import (
    ExperimentIn,
    FunnelIn,
    NodeReportIn,
    config_document,
    config_etag,
)
from hub.registry import Conflict, NotFound
from hub.state import JSON_BODY_LIMIT, Endpoint, Hub, endpoint, store_call
from hub.store.base import ExperimentRecord, Store
from nexus_service.http import ApiError, offload, parse_body
from nexus_wire.counters import MAX_COUNT, CounterKey, counter_keys

log = logging.getLogger("nexus.hub.funnels")
#: a weight change smaller than this is not worth a new config version (edges re-pull on every
#: version); it is also above the Monte Carlo noise of P(best) from 20,000 draws
WEIGHT_EPSILON = 0.01
_CAS_ATTEMPTS = 5


def funnel_view(funnel: Funnel) -> dict[str, Any]:
    return {"id": funnel.id, "steps": list(funnel.steps)}


def experiment_view(record: ExperimentRecord) -> dict[str, Any]:
    e = record.experiment
    shares = e.weights
    return {
        "id": e.id,
        "funnel_id": e.funnel_id,
        "status": str(e.status),
        "allocation": str(e.allocation),
        "version": e.version,
        "salt": e.salt,
        "decision_step": e.decision_step,
        "control": e.control,
        "variants": [{"name": v.name, "weight": v.weight, "share": shares[v.name]} for v in e.variants],
        "updated_at": record.at,
    }


def _experiment(store: Store, experiment_id: str) -> ExperimentRecord:
    record = store.get_experiment(experiment_id)
    if record is None:
        raise NotFound(f"unknown experiment {experiment_id!r}")
    return record


def _funnel(store: Store, funnel_id: str) -> Funnel:
    funnel = store.get_funnel(funnel_id)
    if funnel is None:
        raise NotFound(f"unknown funnel {funnel_id!r}")
    return funnel


def change_experiment(
    store: Store, experiment_id: str, change: Callable[[Experiment], Experiment], now: float
) -> ExperimentRecord:
    """Apply ``change`` to the newest version, retrying when another writer got in first."""
    for _ in range(_CAS_ATTEMPTS):
        current = _experiment(store, experiment_id).experiment
        try:
            updated = change(current)
        except FunnelConfigError as exc:
            raise Conflict(str(exc)) from None
        outcome = store.update_experiment(updated, now)
        if outcome == "ok":
            return ExperimentRecord(updated, now)
        if outcome == "busy":
            raise Conflict(f"another experiment already runs on funnel {updated.funnel_id}; stop it first")
    raise Conflict(f"experiment {experiment_id} is changing too often; try again")


def config(store: Store) -> dict[str, Any]:
    return config_document(store.list_funnels(), [r.experiment for r in store.list_experiments()])


def merge_report(store: Store, node_id: str, body: NodeReportIn) -> int:
    """Check a node's report against the config (only keys of published experiments) and merge it."""
    report = body.to_report()
    if report.node_id != node_id:
        raise AuthError(403, f"node {node_id} cannot report counts for node {report.node_id}")
    funnels = {f.id: f for f in store.list_funnels()}
    allowed: set[CounterKey] = set()
    for record in store.list_experiments():
        e = record.experiment
        if e.status != Status.DRAFT and e.funnel_id in funnels:
            funnel = funnels[e.funnel_id]
            e.validate_against(funnel)
            allowed |= counter_keys(e.id, e.variant_names, funnel.steps)
    unknown = [key for key in report.counts if key not in allowed]
    if unknown:
        raise ApiError(422, f"counter key {unknown[0]} is not an (experiment, variant, step) of a published experiment")
    # Not atomic with the merge: replicas racing could pass the bound together, by at most
    # one report each; the bound is for exactness, and every count is also bounded alone.
    state: dict[CounterKey, dict[str, int]] = {}
    for experiment in {key[0] for key in report.counts}:
        state.update(store.counter_state(experiment))
    too_large = overflowing(state, report, MAX_COUNT)
    if too_large is not None:
        raise ApiError(422, f"counts.count: the total of {too_large} would exceed {MAX_COUNT} (2**53 - 1)")
    store.merge_counters(report.node_id, report.counts)
    return len(report.counts)


def results(hub: Hub, experiment_id: str, now: float) -> dict[str, Any]:
    record = _experiment(hub.store, experiment_id)
    e = record.experiment
    funnel = _funnel(hub.store, e.funnel_id)
    counts = experiment_totals(hub.store.counter_state(e.id), e.id)
    settings = hub.settings
    computed = experiment_results(
        e,
        funnel,
        counts,
        min_group_size=settings.results_min_group_size,
        noise_scale=settings.results_noise_scale,
        noise_seed=noise_seed_for(hub.registry.key.private_bytes_raw(), e.id, counts),
    )
    return {**computed.to_dict(), "status": str(e.status), "allocation": str(e.allocation), "computed_at": now}


def update_thompson(hub: Hub, now: float) -> list[Experiment]:
    """One pass: new weights for each running ``thompson`` experiment whose cadence is due.

    The due time comes from the stored version's timestamp, so several hub replicas
    running this loop still publish about one update per cadence.
    """
    published = []
    for record in hub.store.list_experiments():
        e = record.experiment
        if (
            e.status != Status.RUNNING
            or e.allocation != Allocation.THOMPSON
            or now - record.at < hub.settings.thompson_interval_s
        ):
            continue
        counts = experiment_totals(hub.store.counter_state(e.id), e.id)
        if not counts:
            continue
        weights = thompson_weights(e, counts, seed=e.version)  # deterministic: replicas agree
        if max(abs(weights[name] - share) for name, share in e.weights.items()) < WEIGHT_EPSILON:
            continue
        updated = e.with_weights(weights)
        if hub.store.update_experiment(updated, now) == "ok":
            published.append(updated)
            log.info(
                "thompson: %s version %d weights %s",
                e.id,
                updated.version,
                {k: round(v, 3) for k, v in weights.items()},
            )
    return published


async def thompson_loop(hub: Hub) -> None:
    """Checks every cadence (at most every 5 s) which experiments are due; survives store outages."""
    while True:
        await asyncio.sleep(min(hub.settings.thompson_interval_s, 5.0))
        try:
            await offload(update_thompson, hub, hub.clock())
        except Exception:
            log.exception("thompson update failed; retrying next cadence")


def start_thompson(hub: Hub) -> Callable[[], None]:
    """Start the updater in the running loop (the hub's lifespan); returns its stop function."""
    task = asyncio.create_task(thompson_loop(hub), name="nexus-thompson")

    def stop() -> None:
        task.cancel()

    return stop


# -- operator ------------------------------------------------------------------------------
@endpoint("admin")
async def create_funnel(request: Request, hub: Hub, principal: Principal) -> Response:
    body = await parse_body(request, FunnelIn, JSON_BODY_LIMIT)
    funnel = body.to_funnel()
    if not await store_call(hub.store, hub.store.add_funnel, funnel):
        raise Conflict(f"funnel {funnel.id} exists (funnels are immutable: create another id)")
    return JSONResponse(funnel_view(funnel), status_code=201)


@endpoint("admin")
async def list_funnels(request: Request, hub: Hub, principal: Principal) -> Response:
    return JSONResponse({"funnels": [funnel_view(f) for f in await store_call(hub.store, hub.store.list_funnels)]})


@endpoint("admin")
async def show_funnel(request: Request, hub: Hub, principal: Principal) -> Response:
    store = hub.store
    funnel = await store_call(store, _funnel, store, request.path_params["funnel"])
    records = await store_call(store, store.list_experiments)
    experiments = [experiment_view(r) for r in records if r.experiment.funnel_id == funnel.id]
    return JSONResponse({**funnel_view(funnel), "experiments": experiments})


@endpoint("admin")
async def create_experiment(request: Request, hub: Hub, principal: Principal) -> Response:
    store = hub.store
    body = await parse_body(request, ExperimentIn, JSON_BODY_LIMIT)
    funnel = await store_call(store, _funnel, store, body.funnel_id)
    experiment = body.to_experiment(funnel)
    now = hub.clock()
    if not await store_call(store, store.add_experiment, experiment, now):
        raise Conflict(f"experiment {experiment.id} exists")
    return JSONResponse(experiment_view(ExperimentRecord(experiment, now)), status_code=201)


@endpoint("admin")
async def list_experiments(request: Request, hub: Hub, principal: Principal) -> Response:
    records = await store_call(hub.store, hub.store.list_experiments)
    return JSONResponse({"experiments": [experiment_view(r) for r in records]})


@endpoint("admin")
async def show_experiment(request: Request, hub: Hub, principal: Principal) -> Response:
    record = await store_call(hub.store, _experiment, hub.store, request.path_params["experiment"])
    return JSONResponse(experiment_view(record))


def transition(status: Status) -> Endpoint:
    """``start`` and ``stop``: the experiment's newest version with ``status``."""

    @endpoint("admin")
    async def handler(request: Request, hub: Hub, principal: Principal) -> Response:
        record = await store_call(
            hub.store,
            change_experiment,
            hub.store,
            request.path_params["experiment"],
            lambda e: e.with_status(status),
            hub.clock(),
        )
        log.info("experiment %s is %s (version %d)", record.experiment.id, status, record.experiment.version)
        return JSONResponse(experiment_view(record))

    return handler


start_experiment = transition(Status.RUNNING)
stop_experiment = transition(Status.STOPPED)


@endpoint("admin")
async def show_results(request: Request, hub: Hub, principal: Principal) -> Response:
    return JSONResponse(await offload(results, hub, request.path_params["experiment"], hub.clock()))


@endpoint("admin")
async def history(request: Request, hub: Hub, principal: Principal) -> Response:
    experiment_id = request.path_params["experiment"]
    records = await store_call(hub.store, hub.store.experiment_history, experiment_id)
    if not records:
        raise NotFound(f"unknown experiment {experiment_id!r}")
    entries = [
        {
            "version": r.experiment.version,
            "at": r.at,
            "status": str(r.experiment.status),
            "weights": r.experiment.weights,
        }
        for r in records
    ]
    return JSONResponse({"experiment": experiment_id, "history": entries})


# -- nodes ---------------------------------------------------------------------------------
@endpoint("node")
async def node_config(request: Request, hub: Hub, principal: Principal) -> Response:
    document = await store_call(hub.store, config, hub.store)
    etag = config_etag(document)
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return Response(raw, media_type="application/json", headers={"ETag": etag})


@endpoint("node")
async def node_counters(request: Request, hub: Hub, principal: Principal) -> Response:
    body = await parse_body(request, NodeReportIn, JSON_BODY_LIMIT)
    assert principal.node is not None
    merged = await store_call(hub.store, merge_report, hub.store, principal.node.node_id, body)
    return JSONResponse({"merged": merged})


def routes() -> list[Route]:
    return [
        Route("/v1/funnels", list_funnels),
        Route("/v1/funnels", create_funnel, methods=["POST"]),
        Route("/v1/funnels/{funnel}", show_funnel),
        Route("/v1/experiments", list_experiments),
        Route("/v1/experiments", create_experiment, methods=["POST"]),
        Route("/v1/experiments/{experiment}", show_experiment),
        Route("/v1/experiments/{experiment}/start", start_experiment, methods=["POST"]),
        Route("/v1/experiments/{experiment}/stop", stop_experiment, methods=["POST"]),
        Route("/v1/experiments/{experiment}/results", show_results),
        Route("/v1/experiments/{experiment}/history", history),
        Route("/v1/nodes/me/funnel-config", node_config),
        Route("/v1/nodes/me/counters", node_counters, methods=["POST"]),
    ]
