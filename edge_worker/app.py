"""The edge node's ASGI app: ``create_app(settings)`` wires state, routes and lifespan.

Background work started in the lifespan: retention of the local store, optional
polling of the model repository, the OIP v2 gRPC server when ``settings.grpc_port`` is
set (``oip_grpc.start``), and, when ``settings.hub_url`` is set, the node's one
:class:`~edge_worker.hub_link.HubLink` and the jobs that share it: model sync
(``sync.run``), funnel sync (``funnels.run_sync``) and, with a SuperLink, the SuperNode
(``federation.run``). Each is a coroutine run as a task and cancelled at shutdown (see
:mod:`edge_worker.state` for what it may use).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from edge_worker import federation, funnels, heap, oip_grpc, own_models, routes, sync
from edge_worker.audit import AuditLog, PrivacyBudget
from edge_worker.batcher import MicroBatcher, Overloaded
from edge_worker.hub_link import HubLink
from edge_worker.metrics import PREFIX, Registry, edge_registry, publish_forever
from edge_worker.openapi import build_openapi
from edge_worker.repository import ModelNotReady, ModelRepository
from edge_worker.settings import EdgeSettings
from edge_worker.state import EdgeState
from edge_worker.store import LocalStore
from models.errors import DataError
from models.families import FAMILIES, Families
from nexus_service.http import exception_handlers
from nexus_service.keyfiles import load_or_create_token, private_dir
from nexus_service.rate_limit import WRONG_CREDENTIALS, TokenBuckets
from nexus_service.request_metrics import RequestMetrics, route_templates
from nexus_wire.datadir import EdgeDataDir

log = logging.getLogger("nexus.edge")
#: seconds the gRPC server gives calls in flight at shutdown
GRPC_GRACE_S = 5.0
DESCRIPTION = "Nexus Edge inference node: emotion and funnel models, Open Inference Protocol v2, local labelled store."


def create_app(settings: EdgeSettings, families: Families = FAMILIES, *, settle_heap: bool = False) -> Starlette:
    """The node's app, serving ``settings.models`` of the families in ``families``.

    ``settle_heap``: once started, freeze the process's heap out of the cyclic GC
    (:mod:`edge_worker.heap`); for a server process of its own only, as freezing is process-wide.
    """
    served = {m: families.get(m) for m in settings.models}  # an unknown name: a NexusError naming the known
    private_dir(settings.data_dir)  # raw inputs, keys and the audit log: the owner's alone
    own_models.prepare(settings)  # with a hub: its own repository, seeded before the first sync
    metrics = edge_registry(settings.max_batch)
    repository = ModelRepository(
        settings.models_dir,
        settings.models,
        backends={m: settings.backend(m) for m in settings.models},
        pins={m: settings.pinned_version(m) for m in settings.models},
        threads=settings.model_threads,
        metrics=metrics,
        families=families,
    )
    threads = settings.pool_threads()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="nexus-infer")
    batchers = {
        m: MicroBatcher(
            m,
            repository.batch_fn(m, served[m].serving.rows),
            pool,
            slots=threads,
            metrics=metrics,
            enabled=settings.batching,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_ms / 1000,
            max_queued=settings.max_queued_requests,
        )
        for m in settings.models
    }
    metrics.on_collect(lambda: _sample_queue_depth(metrics, batchers))
    if settings.workers > 1:  # one /metrics view over the workers (nexus_service.metrics)
        metrics.share(EdgeDataDir(settings.data_dir).metrics)
    limits = {m: settings.limits(family.serving.limits) for m, family in served.items()}
    state = EdgeState(settings, metrics, repository, families, limits, batchers, pool)
    metrics.on_collect(lambda: _sample_egress(metrics, state))
    table = routes.operations(state) + funnels.operations()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.store = await state.in_store(LocalStore, settings.data_dir)
        await state.reload()
        await _enforce_retention(state)  # expired rows go before the node takes requests
        grpc_server = None
        if settings.grpc_port is not None:  # same loop, so the same batchers as HTTP
            grpc_server, state.grpc_port = await oip_grpc.start(state, settings.host, settings.grpc_port)
        state.tasks.append(asyncio.create_task(_retention_loop(state), name="nexus-retention"))
        if metrics.shared:
            state.tasks.append(asyncio.create_task(publish_forever(metrics), name="nexus-metrics-publish"))
        if settings.poll_interval_s > 0:
            state.tasks.append(asyncio.create_task(_poll_loop(state), name="nexus-model-poll"))
        if settings.hub_url:
            hub = state.hub = HubLink.open(str(settings.hub_url), settings.data_dir)
            HubLink.declare_metrics(metrics)
            state.tasks.append(asyncio.create_task(sync.run(state, hub), name="nexus-sync"))
            state.tasks.append(
                asyncio.create_task(funnels.run_sync(state, hub, app.state.funnels), name="nexus-funnel-sync")
            )
            if settings.supernode and settings.superlink:
                state.tasks.append(asyncio.create_task(federation.run(state, hub), name="nexus-supernode"))
        for task in state.tasks:
            task.add_done_callback(_report_exit)
        if settle_heap:  # everything start-up made is alive from here on
            heap.settle()
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(GRPC_GRACE_S)  # calls in flight finish while the batchers still run
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            state.tasks.clear()
            if state.hub is not None:
                await state.hub.aclose()
                state.hub = None
            await state.in_store(state.store.close)
            pool.shutdown(wait=True)
            state.store_pool.shutdown(wait=True)
            if metrics.shared:
                metrics.publish(exited=True)  # this worker's final counts outlive it

    errors = exception_handlers(
        log,
        {DataError: 422, ModelNotReady: (503, {"Retry-After": "1"}), Overloaded: (429, {"Retry-After": "1"})},
        "node",
    )
    app = Starlette(routes=routes.routes(table), exception_handlers=errors, lifespan=lifespan)
    app.add_middleware(RequestMetrics, metrics=metrics, prefix=PREFIX, templates=route_templates(app.routes))
    app.state.edge = state
    # the bearer token of GET /v1/privacy/audit, created on first start, never logged
    app.state.operator_token = load_or_create_token(EdgeDataDir(settings.data_dir).operator_token)
    # wrong operator tokens per client address: the hub's default limit (nexus_service/rate_limit.py)
    app.state.operator_failures = TokenBuckets("wrong operator tokens", WRONG_CREDENTIALS)
    if settings.privacy_epsilon is not None or settings.privacy_delta is not None:
        PrivacyBudget(
            settings.data_dir, settings.privacy_epsilon, settings.privacy_delta
        )  # before the SuperNode starts
    app.state.funnels = funnels.FunnelConfig(settings.data_dir)  # the hub's funnel config, cached
    app.state.openapi = build_openapi([op for op, _ in table], "Nexus Edge node", routes.SERVER_VERSION, DESCRIPTION)
    return app


def create_app_from_env() -> Starlette:
    """uvicorn factory (``edge_worker.app:create_app_from_env``): each server process's app."""
    settings = EdgeSettings.from_env()
    return create_app(settings, settle_heap=settings.gc_tuning)


def _sample_queue_depth(metrics: Registry, batchers: dict[str, MicroBatcher]) -> None:
    """Queue depth is read when metrics are collected rather than updated on every request."""
    for name, batcher in batchers.items():
        metrics.set("nexus_edge_queue_depth", (("model", name),), batcher.queue_depth)


def _sample_egress(metrics: Registry, state: EdgeState) -> None:
    if state.hub is not None:
        state.hub.sample_metrics(metrics)


def _report_exit(task: asyncio.Task[Any]) -> None:
    """A background task must run until shutdown; say so loudly if one ends early."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped: %s", task.get_name(), task.exception(), exc_info=task.exception())


def _purge_and_log(store: LocalStore, data_dir: Path, days: float) -> int:
    """One retention run, logged in the audit log even when nothing was old enough."""
    cutoff, rows = store.purge_rows_older_than(days)
    with AuditLog(data_dir) as audit:
        audit.record_retention(cutoff, days, rows)
    return sum(rows.values())


async def _enforce_retention(state: EdgeState) -> None:
    try:
        removed = await state.in_store(
            _purge_and_log, state.store, state.settings.data_dir, state.settings.retention_days
        )
    except Exception:  # a locked or full disk must not end retention for good
        log.exception("retention pass failed; retrying in %.0f s", state.settings.retention_interval_s)
        return
    if removed:
        state.metrics.inc("nexus_edge_store_rows_erased_total", (("reason", "retention"),), removed)
        log.info("retention removed %d rows older than %s days", removed, state.settings.retention_days)


async def _retention_loop(state: EdgeState) -> None:
    while True:
        await asyncio.sleep(state.settings.retention_interval_s)
        await _enforce_retention(state)


async def _poll_loop(state: EdgeState) -> None:
    while True:
        await asyncio.sleep(state.settings.poll_interval_s)
        try:
            await state.reload()
        except Exception:
            log.exception("model repository poll failed")
