"""HTTP handlers of the edge node and the operation table the OpenAPI document is built from."""

from __future__ import annotations

import asyncio
import hmac
import re
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from edge_worker import oip
from edge_worker.audit import OPERATOR_TOKEN_FILE, AuditLog
from edge_worker.audit_report import build_report
from edge_worker.errors import ApiError, parse_body
from edge_worker.openapi import Operation
from edge_worker.outputs import FastJSONResponse, emotion_view
from edge_worker.schemas import (
    VISITOR_ID_PATTERN,
    EmotionResponse,
    EraseResponse,
    ErrorResponse,
    FunnelResponse,
    InferRequest,
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    Schemas,
    ServerMetadata,
    StoredResponse,
)
from edge_worker.state import EdgeState
from edge_worker.store import LocalStore

SERVER_NAME = "nexus-edge"
SERVER_VERSION = "0.1.0"
_VISITOR_RE = re.compile(VISITOR_ID_PATTERN)
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FUNNEL_DECIMALS = 6


def _state(request: Request) -> EdgeState:
    return request.app.state.edge


def _model(state: EdgeState, name: str) -> str:
    if name not in state.repository.models:
        raise ApiError(404, f"unknown model {name!r}; this node serves {', '.join(state.repository.models)}")
    return name


# --- application API ---------------------------------------------------------------------


async def emotion(request: Request) -> Response:
    state = _state(request)
    body = await parse_body(request, state.schemas.EmotionRequest, state.settings.max_body_bytes)
    result = await state.batchers["emotion"].submit(body.items())
    results = [row.as_json() for row in result.rows]
    return FastJSONResponse({"model": "emotion", "model_version": result.source.version, "results": results})


async def funnel_score(request: Request) -> Response:
    state = _state(request)
    body = await parse_body(request, state.schemas.FunnelRequest, state.settings.max_body_bytes)
    result = await state.batchers["funnel"].submit(body.items())
    probabilities = [round(p, FUNNEL_DECIMALS) for p in result.rows]
    return FastJSONResponse({"model": "funnel", "model_version": result.source.version, "probabilities": probabilities})


async def feedback(request: Request) -> Response:
    state = _state(request)
    body = await parse_body(request, state.schemas.FeedbackRequest, state.settings.max_body_bytes)
    known = emotion_view(state.served("emotion"))[0]
    unknown = sorted(set(body.labels) - set(known))
    if unknown:
        raise ApiError(422, f"labels: unknown label(s) {', '.join(unknown)}; known: {', '.join(known)}")
    row = await state.in_store(state.store.add_feedback, body.text, body.labels, body.visitor_id)
    return JSONResponse({"stored": True, "id": row}, status_code=201)


async def funnel_outcome(request: Request) -> Response:
    state = _state(request)
    body = await parse_body(request, state.schemas.OutcomeRequest, state.settings.max_body_bytes)
    # Scoring the session runs the featurizer: a session it refuses is refused here too,
    # so the store only keeps rows local training can use.
    await state.batchers["funnel"].submit([body.session])
    row = await state.in_store(state.store.add_outcome, body.session, body.converted, body.visitor_id)
    return JSONResponse({"stored": True, "id": row}, status_code=201)


def _require_operator(request: Request) -> None:
    """The privacy endpoints erase data or describe the node: the operator token only."""
    expected = f"Bearer {request.app.state.operator_token}"
    if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected.encode()):
        raise ApiError(
            401, f"this endpoint needs the edge's operator token (the {OPERATOR_TOKEN_FILE} file in its data dir)"
        )


async def erase_visitor(request: Request) -> Response:
    _require_operator(request)
    state = _state(request)
    visitor_id = request.path_params["visitor_id"]
    if not _VISITOR_RE.match(visitor_id):
        raise ApiError(422, f"visitor_id must match {VISITOR_ID_PATTERN}")
    erased = await state.in_store(_erase_and_log, state.store, state.settings.data_dir, visitor_id)
    state.metrics.inc("nexus_edge_store_rows_erased_total", (("reason", "erasure"),), erased)
    return JSONResponse({"visitor_id": visitor_id, "erased": erased})


def _erase_and_log(store: LocalStore, data_dir: Path, visitor_id: str) -> int:
    rows = store.erase_visitor_rows(visitor_id)
    with AuditLog(data_dir) as audit:  # rare: a connection of its own per erasure
        audit.record_erasure(visitor_id, rows)
    return sum(rows.values())


async def privacy_audit(request: Request) -> Response:
    """The report ``nexus audit report`` prints (it lists the node's tables and egress; no rows)."""
    _require_operator(request)
    settings = _state(request).settings
    report = await asyncio.to_thread(build_report, settings.data_dir, retention_days=settings.retention_days)
    return JSONResponse(report)


# --- Open Inference Protocol v2 ------------------------------------------------------------


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    is_ready = _state(request).repository.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def model_metadata(request: Request) -> Response:
    state = _state(request)
    name = _model(state, request.path_params["name"])
    return JSONResponse(oip.metadata(state.served(name), state.repository.versions(name)))


async def model_ready(request: Request) -> Response:
    state = _state(request)
    name = _model(state, request.path_params["name"])
    is_ready = state.repository.get(name) is not None
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


async def infer(request: Request) -> Response:
    state = _state(request)
    name = _model(state, request.path_params["name"])
    body = await parse_body(request, InferRequest, state.settings.max_body_bytes)
    items = oip.decode_items(state.served(name), body, state.settings)
    result = await state.batchers[name].submit(items)
    scores = [row.scores for row in result.rows] if name == "emotion" else result.rows
    return FastJSONResponse(oip.encode(name, np.asarray(scores, dtype=np.float32), result.source.version, body.id))


# --- operations ---------------------------------------------------------------------------


async def metrics(request: Request) -> Response:
    # With --workers > 1 this reads the other workers' files: off the event loop.
    text = await asyncio.to_thread(_state(request).metrics.render)
    return PlainTextResponse(text, media_type=PROMETHEUS_TYPE)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


def operations(schemas: Schemas, models: tuple[str, ...]) -> list[tuple[Operation, Any]]:
    """(documented operation, handler) for every route the node serves."""
    name = {"name": {"type": "string", "minLength": 1, "maxLength": 64}}
    visitor = {"visitor_id": {"type": "string", "pattern": VISITOR_ID_PATTERN}}
    unavailable = {503: ErrorResponse}
    table = [
        (
            Operation(
                "post",
                "/v1/emotion",
                "emotion label scores of one or more texts",
                "inference",
                schemas.EmotionRequest,
                {200: EmotionResponse, **unavailable},
            ),
            emotion,
        ),
        (
            Operation(
                "post",
                "/v1/funnel/score",
                "P(purchase) of one or more sessions",
                "inference",
                schemas.FunnelRequest,
                {200: FunnelResponse, **unavailable},
            ),
            funnel_score,
        ),
        (
            Operation(
                "post",
                "/v1/feedback",
                "store a text with its true emotion labels (kept on this node)",
                "local store",
                schemas.FeedbackRequest,
                {201: StoredResponse, **unavailable},
            ),
            feedback,
        ),
        (
            Operation(
                "post",
                "/v1/funnel/outcome",
                "store a session and whether it converted (kept on this node)",
                "local store",
                schemas.OutcomeRequest,
                {201: StoredResponse, **unavailable},
            ),
            funnel_outcome,
        ),
        (
            Operation(
                "delete",
                "/v1/privacy/visitors/{visitor_id}",
                "erase every stored row of a visitor (logged in the audit log; operator token)",
                "privacy",
                None,
                {200: EraseResponse, 401: ErrorResponse, 422: ErrorResponse},
                visitor,
            ),
            erase_visitor,
        ),
        (
            Operation(
                "get",
                "/v1/privacy/audit",
                "privacy audit report: data inventory, egress ledger, DP budget, refusals, erasures, verification (operator token)",
                "privacy",
                None,
                {200: "application/json", 401: ErrorResponse},
            ),
            privacy_audit,
        ),
        (
            Operation("get", "/v2", "server metadata (Open Inference Protocol v2)", "v2", None, {200: ServerMetadata}),
            server_metadata,
        ),
        (Operation("get", "/v2/health/live", "liveness", "v2", None, {200: Live}), live),
        (
            Operation(
                "get",
                "/v2/health/ready",
                "readiness: every configured model is loaded",
                "v2",
                None,
                {200: Ready, 503: Ready},
            ),
            ready,
        ),
        (
            Operation(
                "get",
                "/v2/models/{name}",
                "model metadata",
                "v2",
                None,
                {200: ModelMetadata, 404: ErrorResponse, **unavailable},
                name,
            ),
            model_metadata,
        ),
        (
            Operation(
                "get",
                "/v2/models/{name}/ready",
                "model readiness",
                "v2",
                None,
                {200: ModelReady, 404: ErrorResponse, 503: ModelReady},
                name,
            ),
            model_ready,
        ),
        (
            Operation(
                "post",
                "/v2/models/{name}/infer",
                "inference with KServe v2 JSON tensors",
                "v2",
                InferRequest,
                {200: InferResponse, 404: ErrorResponse, **unavailable},
                name,
            ),
            infer,
        ),
        (Operation("get", "/metrics", "Prometheus metrics", "operations", None, {200: "text/plain"}), metrics),
        (Operation("get", "/openapi.json", "this document", "operations", None, {200: "application/json"}), openapi),
    ]
    # Model-specific routes exist only when their model is configured.
    needs = {emotion: "emotion", feedback: "emotion", funnel_score: "funnel", funnel_outcome: "funnel"}
    return [(op, handler) for op, handler in table if needs.get(handler, models[0]) in models]


def routes(table: list[tuple[Operation, Any]]) -> list[Route]:
    return [Route(op.path, handler, methods=[op.method.upper()]) for op, handler in table]
