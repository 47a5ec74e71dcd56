"""Funnels on the edge: sticky variant assignment, deduplicated step events, and the sync
loop that pulls the hub's funnel config and reports counters.

- ``POST /v1/funnels/{funnel}/assign``: the visitor's variant in the funnel's running
  experiment (``sha256-u53/1``, kept in the local store so it stays put when Thompson moves
  the weights). The first assignment counts the visitor under ``$assigned``.
- ``POST /v1/funnels/{funnel}/events``: a step, checked against the config, counted once
  per visitor and step. The raw event (visitor id, time) stays in the local store under
  the retention limit; only the aggregate counts leave, as integers.

The config is the hub's document (hub/funnel_schemas.py ``config_document``), pulled with
``If-None-Match`` and cached in the data dir, so the node keeps assigning and counting
through a restart while the hub is down. Reports carry absolute counts and the hub merges
with a per-node max (docs/funnels.md), so a retry, a duplicate or a re-send after a restart
can never double-count. Several worker processes of one node each run this loop: their
reports read the same store, so the duplicates are harmless too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge_worker.hub_answers import FunnelConfigAnswer, HubAnswerRefused, validated
from edge_worker.hub_link import HubLink
from edge_worker.openapi import Operation
from edge_worker.payloads import Declarations
from edge_worker.schemas import ErrorResponse
from edge_worker.state import EdgeState
from edge_worker.sync import Backoff
from nexus_service.http import ApiError, parse_body
from nexus_service.keyfiles import write_private_json
from nexus_wire.assignment import ALGORITHM
from nexus_wire.counters import CounterKey, counter_keys
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.names import CONFIG_ID, VISITOR_ID, anchored

log = logging.getLogger("nexus.edge.funnels")
#: counters per report: keeps a report well under the hub's 64 KiB body limit
REPORT_CHUNK = 400
_ID = anchored(CONFIG_ID)


# -- the config as pulled from the hub (its schema: edge_worker/hub_answers.py) ---------------


@dataclass(frozen=True)
class RunningExperiment:
    id: str
    salt: str
    version: int
    variants: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class FunnelSpec:
    id: str
    steps: tuple[str, ...]
    running: RunningExperiment | None


class FunnelConfig:
    """The hub's funnel config as this node last saw it, cached in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = EdgeDataDir(Path(data_dir)).funnel_config
        self.etag: str | None = None
        self.document: dict[str, Any] = {"assignment": ALGORITHM, "funnels": [], "experiments": []}
        self.funnels: dict[str, FunnelSpec] = {}
        #: every counter key of the config's experiments, running or stopped (their final counts still sync)
        self.counter_keys: frozenset[CounterKey] = frozenset()
        try:
            cached = json.loads(self.path.read_text())
            self._adopt(cached["etag"], cached["document"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, RecursionError, HubAnswerRefused) as exc:
            log.warning("ignoring unreadable %s (%s); waiting for the hub's config", self.path, exc)

    def _adopt(self, etag: str | None, document: dict[str, Any]) -> None:
        parsed = validated("funnel config", FunnelConfigAnswer, document)
        running = {
            e.funnel_id: RunningExperiment(e.id, e.salt, e.version, tuple((v.name, v.weight) for v in e.variants))
            for e in parsed.experiments
            if e.status == "running"
        }
        self.funnels = {f.id: FunnelSpec(f.id, tuple(f.steps), running.get(f.id)) for f in parsed.funnels}
        steps = {f.id: f.steps for f in parsed.funnels}
        self.counter_keys = frozenset(
            key
            for e in parsed.experiments
            for key in counter_keys(e.id, [v.name for v in e.variants], steps.get(e.funnel_id, ()))
        )
        self.document, self.etag = document, etag

    def replace(self, etag: str, document: dict[str, Any]) -> None:
        """Adopt a config from the hub and cache it (an invalid one raises :class:`HubAnswerRefused`
        and changes nothing)."""
        self._adopt(etag, document)
        write_private_json(self.path, {"etag": etag, "document": document})

    def funnel(self, funnel_id: str) -> FunnelSpec:
        spec = self.funnels.get(funnel_id)
        if spec is None:
            known = ", ".join(sorted(self.funnels)) or "none (no config from the hub yet)"
            raise ApiError(404, f"unknown funnel {funnel_id!r}; this node knows: {known}")
        return spec


# -- HTTP --------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssignRequest(_Body):
    visitor_id: str = Field(pattern=anchored(VISITOR_ID), description="the site's visitor id; stays on this node")


class EventRequest(_Body):
    visitor_id: str = Field(pattern=anchored(VISITOR_ID))
    step: str = Field(pattern=_ID, description="a step of the funnel")


class AssignResponse(BaseModel):
    funnel: str
    experiment: str | None = Field(description="null when no experiment runs on the funnel")
    variant: str | None
    version: int | None = Field(description="config version of the experiment used")


class EventResponse(BaseModel):
    funnel: str
    experiment: str | None
    variant: str | None
    step: str
    counted: bool = Field(description="false for a repeat of the same visitor and step")


def _context(request: Request) -> tuple[EdgeState, FunnelConfig]:
    return request.app.state.edge, request.app.state.funnels


async def assign(request: Request) -> Response:
    state, config = _context(request)
    body = await parse_body(request, AssignRequest, state.settings.max_body_bytes)
    spec = config.funnel(request.path_params["funnel"])
    e = spec.running
    if e is None:
        return JSONResponse({"funnel": spec.id, "experiment": None, "variant": None, "version": None})
    variant = await state.in_store(state.local_store.funnel_assign, e.id, e.salt, body.visitor_id, e.variants)
    return JSONResponse({"funnel": spec.id, "experiment": e.id, "variant": variant, "version": e.version})


async def event(request: Request) -> Response:
    state, config = _context(request)
    body = await parse_body(request, EventRequest, state.settings.max_body_bytes)
    spec = config.funnel(request.path_params["funnel"])
    if body.step not in spec.steps:
        raise ApiError(422, f"step: {body.step!r} is not a step of funnel {spec.id} ({', '.join(spec.steps)})")
    e = spec.running
    experiment = None if e is None else (e.id, e.salt, e.variants)
    variant, counted = await state.in_store(
        state.local_store.funnel_event, spec.id, experiment, body.visitor_id, body.step
    )
    return JSONResponse(
        {
            "funnel": spec.id,
            "experiment": None if e is None else e.id,
            "variant": variant,
            "step": body.step,
            "counted": counted,
        }
    )


def operations() -> list[tuple[Operation, Any]]:
    funnel = {"funnel": {"type": "string", "pattern": _ID}}
    refused = {404: ErrorResponse, 422: ErrorResponse}
    return [
        (
            Operation(
                "post",
                "/v1/funnels/{funnel}/assign",
                "the visitor's variant in the funnel's running experiment (sticky)",
                "funnels",
                AssignRequest,
                {200: AssignResponse, **refused},
                funnel,
            ),
            assign,
        ),
        (
            Operation(
                "post",
                "/v1/funnels/{funnel}/events",
                "count a funnel step once per visitor (the event stays on this node)",
                "funnels",
                EventRequest,
                {200: EventResponse, **refused},
                funnel,
            ),
            event,
        ),
    ]


# -- sync with the hub -------------------------------------------------------------------------


class FunnelSync:
    """One node's funnel sync: pull the config, report the counts the hub has not acknowledged."""

    def __init__(self, link: HubLink, config: FunnelConfig, state: EdgeState) -> None:
        self.link = link
        self.config = config
        self.state = state
        #: the first report of a process sends every count (the hub may have lost some); later ones only changes
        self._sent_all = False
        #: funnel configs from the hub refused (malformed, too large), each logged
        self.refusals = 0

    async def sync_once(self) -> int:
        """Returns how many counters the hub acknowledged; 0 while the node is not enrolled yet."""
        identity = await self.link.reload_identity()
        if identity is None:
            return 0  # the model sync agent enrolls the node
        gateway = self.link.gateway
        try:
            polled = await gateway.poll_funnel_config(self.config.etag)
            if polled is not None:
                self.config.replace(*polled)
                log.info("funnel config %s: %d funnels", polled[0], len(self.config.funnels))
        except HubAnswerRefused as exc:
            self.refusals += 1
            log.error("%s; nothing of it used, assigning and counting with the config of %s", exc, self.config.etag)
            raise
        declared = self.config.counter_keys
        gateway.declared = Declarations(counter_keys=declared)
        store = self.state.local_store
        counts = await self.state.in_store(store.funnel_counts, self._sent_all)
        unknown = [key for key in counts if key not in declared]
        if unknown:
            log.warning("not reporting %d counters the hub's config no longer names, e.g. %s", len(unknown), unknown[0])
        items = sorted((key, count) for key, count in counts.items() if key in declared)
        for start in range(0, len(items), REPORT_CHUNK):
            chunk = dict(items[start : start + REPORT_CHUNK])
            await gateway.report_counters(identity.node_id, chunk)
            await self.state.in_store(store.mark_synced, chunk)
        self._sent_all = True
        return len(items)


async def run_sync(state: EdgeState, link: HubLink, config: FunnelConfig) -> None:
    """Background task of the node's lifespan when a hub is configured; backs off while the hub is down."""
    settings = state.settings
    sync = FunnelSync(link, config, state)
    backoff, rng, failures = Backoff(settings.funnel_sync_s / 2, 10 * settings.funnel_sync_s), random.Random(), 0
    while True:
        try:
            await sync.sync_once()
            failures, delay = 0, settings.funnel_sync_s
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must outlive any one failure; counting goes on locally
            failures += 1
            delay = backoff.delay(failures, rng)
            log.warning("funnel sync failed (%d in a row), retrying in %.1f s: %s", failures, delay, exc)
        await asyncio.sleep(delay)
