"""HTTP handlers of the edge node and the operation table the OpenAPI document is built from."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_worker import oip, oip_http
from edge_worker.audit import AuditLog, AuditReader, ConsistencyProof
from edge_worker.audit.report import build_report
from edge_worker.openapi import Operation
from edge_worker.outputs import FastJSONResponse
from edge_worker.schemas import (
    ConsistencyQuery,
    ConsistencyResponse,
    EraseResponse,
    ErrorResponse,
    InferRequest,
    InferResponse,
    ItemsRequest,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    StoredResponse,
    answer_model,
    feedback_request,
    items_request,
    outcome_request,
)
from edge_worker.state import EdgeState
from edge_worker.store import LocalStore
from models.family import Family
from nexus_service.http import ApiError, describe, parse_body
from nexus_service.rate_limit import TokenBuckets, client_address
from nexus_service.request_metrics import metrics_response
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.names import VISITOR_ID, anchored, fullmatch

SERVER_VERSION = oip.SERVER_VERSION
_VISITOR_ID = anchored(VISITOR_ID)


def _state(request: Request) -> EdgeState:
    return request.app.state.edge


# --- application API ---------------------------------------------------------------------
# Built per served family from its record (models.family.Serving): the scoring route, and
# the local-store route that collects the family's labelled examples.

Handler = Callable[[Request], Awaitable[Response]]


def _scorer(family: Family, body: type[ItemsRequest]) -> Handler:
    name, serving = family.name, family.serving

    async def score(request: Request) -> Response:
        state = _state(request)
        parsed = await parse_body(request, body, state.settings.max_body_bytes)
        result = await state.batchers[name].submit(parsed.items())
        answers = [serving.answer_json(row) for row in result.rows]
        return FastJSONResponse({"model": name, "model_version": result.source.version, serving.answer: answers})

    return score


def _feedback(family: Family, body: type[BaseModel]) -> Handler:
    name = family.name

    async def feedback(request: Request) -> Response:
        state = _state(request)
        parsed: Any = await parse_body(request, body, state.settings.max_body_bytes)
        known = state.served(name).manifest["labels"]
        unknown = sorted(set(parsed.labels) - set(known))
        if unknown:
            raise ApiError(422, f"labels: unknown label(s) {', '.join(unknown)}; known: {', '.join(known)}")
        row = await state.in_store(state.local_store.add_feedback, parsed.text, parsed.labels, parsed.visitor_id)
        return JSONResponse({"stored": True, "id": row}, status_code=201)

    return feedback


def _outcome(family: Family, body: type[BaseModel]) -> Handler:
    name = family.name

    async def outcome(request: Request) -> Response:
        state = _state(request)
        parsed: Any = await parse_body(request, body, state.settings.max_body_bytes)
        # Scoring the session runs the featurizer: a session it refuses is refused here too,
        # so the store only keeps rows local training can use.
        await state.batchers[name].submit([parsed.session])
        row = await state.in_store(state.local_store.add_outcome, parsed.session, parsed.converted, parsed.visitor_id)
        return JSONResponse({"stored": True, "id": row}, status_code=201)

    return outcome


@dataclass(frozen=True)
class StoreRoute:
    """A local-store route of the edge (its store table), served for the family that names it."""

    summary: str
    #: the family's item type -> the request body
    body: Callable[[Any], type[BaseModel]]
    handler: Callable[[Family, type[BaseModel]], Handler]


STORE_ROUTES = {
    "/v1/feedback": StoreRoute(
        "store a text with its true emotion labels (kept on this node)", feedback_request, _feedback
    ),
    "/v1/funnel/outcome": StoreRoute(
        "store a session and whether it converted (kept on this node)", outcome_request, _outcome
    ),
}


def family_operations(family: Family, limits: Mapping[str, int]) -> list[tuple[Operation, Any]]:
    """The scoring route of a served family, and its local-store route if it has one."""
    serving, unavailable = family.serving, {503: ErrorResponse}
    request = items_request(family, limits)
    table: list[tuple[Operation, Any]] = [
        (
            Operation(
                "post", serving.path, serving.summary, "inference", request, {200: answer_model(family), **unavailable}
            ),
            _scorer(family, request),
        )
    ]
    if serving.store_route is not None:
        store = STORE_ROUTES[serving.store_route]
        body = store.body(serving.item_type(limits))
        table.append(
            (
                Operation(
                    "post",
                    serving.store_route,
                    store.summary,
                    "local store",
                    body,
                    {201: StoredResponse, **unavailable},
                ),
                store.handler(family, body),
            )
        )
    return table


def _require_operator(request: Request) -> None:
    """The privacy endpoints erase data or describe the node: the operator token only. A wrong
    token spends one of its address's tokens; an address with none left gets 429 first."""
    failures: TokenBuckets = request.app.state.operator_failures
    address = client_address(request)
    failures.check(address)
    expected = f"Bearer {request.app.state.operator_token}"
    authorization = request.headers.get("authorization", "")
    if not hmac.compare_digest(authorization.encode(), expected.encode()):
        if authorization:  # no credential at all guesses nothing
            failures.spend(address)
        raise ApiError(
            401,
            f"this endpoint needs the edge's operator token (the {EdgeDataDir(Path()).operator_token.name} file in its "
            "data dir)",
        )


async def erase_visitor(request: Request) -> Response:
    _require_operator(request)
    state = _state(request)
    visitor_id = request.path_params["visitor_id"]
    if not fullmatch(VISITOR_ID, visitor_id):
        raise ApiError(422, f"visitor_id must match {_VISITOR_ID}")
    erased = await state.in_store(_erase_and_log, state.store, state.settings.data_dir, visitor_id)
    state.metrics.inc("nexus_edge_store_rows_erased_total", (("reason", "erasure"),), erased)
    return JSONResponse({"visitor_id": visitor_id, "erased": erased})


def _erase_and_log(store: LocalStore, data_dir: Path, visitor_id: str) -> int:
    rows = store.erase_visitor_rows(visitor_id)
    with AuditLog(data_dir) as audit:  # rare: a connection of its own per erasure
        audit.record_erasure(visitor_id, rows)
    return sum(rows.values())


async def audit_consistency(request: Request) -> Response:
    """RFC 6962 consistency proof between two of the node's signed tree heads (operator token)."""
    _require_operator(request)
    try:
        query = ConsistencyQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise ApiError(422, describe(exc)) from None
    proof = await asyncio.to_thread(_consistency, _state(request).settings.data_dir, query)
    return JSONResponse(proof.as_dict())


def _consistency(data_dir: Path, query: ConsistencyQuery) -> ConsistencyProof:
    reader = AuditReader(data_dir)
    head = reader.tree_head()
    size = 0 if head is None else head.size
    wanted = query.second or query.first
    if wanted > size:
        raise ApiError(404, f"no signed tree head of size {wanted}: the audit log holds {size} entries")
    return reader.consistency_proof(query.first, query.second)


async def privacy_audit(request: Request) -> Response:
    """The report ``nexus audit report`` prints (it lists the node's tables and egress; no rows)."""
    _require_operator(request)
    settings = _state(request).settings
    report = await asyncio.to_thread(build_report, settings.data_dir, retention_days=settings.retention_days)
    return JSONResponse(report)


# --- Open Inference Protocol v2 ------------------------------------------------------------


async def server_metadata(request: Request) -> Response:
    return JSONResponse(oip.server_metadata())


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    is_ready = _state(request).repository.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


# The /versions/{version} forms (tritonclient's, given a model_version) take only the loaded version.


async def model_metadata(request: Request) -> Response:
    state = _state(request)
    family, served = oip.resolve(state, request.path_params["name"], request.path_params.get("version"))
    return JSONResponse(oip.metadata(family, served, state.repository.versions(served.name)))


async def model_ready(request: Request) -> Response:
    name = request.path_params["name"]
    is_ready = oip.model_ready(_state(request), name, request.path_params.get("version"))
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


async def infer(request: Request) -> Response:
    """JSON tensors or the binary tensor data extension (edge_worker/oip_http.py), both ways."""
    state = _state(request)
    family, served = oip.resolve(state, request.path_params["name"], request.path_params.get("version"))
    body, tensors = await oip_http.read_request(request, state.settings.max_body_bytes)
    oip.check_outputs(family, served, [output.name for output in body.outputs or []])
    items = oip.decode_items(family, served, tensors, state.limits[served.name])
    result = await state.batchers[served.name].submit(items)
    outputs = oip.outputs(family, result.source, list(result.rows))
    return oip_http.response(body, served.name, result.source.version, outputs)


# --- operations ---------------------------------------------------------------------------


async def metrics(request: Request) -> Response:
    return await metrics_response(_state(request).metrics)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


def operations(state: EdgeState) -> list[tuple[Operation, Any]]:
    """(documented operation, handler) for every route the node serves."""
    name = {"name": {"type": "string", "minLength": 1, "maxLength": 64}}
    visitor = {"visitor_id": {"type": "string", "pattern": _VISITOR_ID}}
    unavailable = {503: ErrorResponse}
    # the routes of the served families, scoring ones first
    served = [family_operations(state.families.get(m), state.limits[m]) for m in state.repository.models]
    table = [ops[0] for ops in served] + [op for ops in served for op in ops[1:]]
    table += [
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
                "privacy audit report: data inventory, egress ledger, DP budget, refusals, erasures, verification "
                "(operator token)",
                "privacy",
                None,
                {200: "application/json", 401: ErrorResponse},
            ),
            privacy_audit,
        ),
        (
            Operation(
                "get",
                "/v1/audit/consistency",
                "RFC 6962 consistency proof between two of the node's signed audit tree heads (operator token)",
                "privacy",
                None,
                {200: ConsistencyResponse, 401: ErrorResponse, 404: ErrorResponse},
                query=ConsistencyQuery,
            ),
            audit_consistency,
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
    ]
    version = {**name, "version": {"type": "string", "minLength": 1, "maxLength": 64}}
    for params, base, which in (
        (name, "/v2/models/{name}", ""),
        (version, "/v2/models/{name}/versions/{version}", " version"),
    ):
        table += [
            (
                Operation(
                    "get",
                    base,
                    f"model{which} metadata",
                    "v2",
                    None,
                    {200: ModelMetadata, 404: ErrorResponse, **unavailable},
                    params,
                ),
                model_metadata,
            ),
            (
                Operation(
                    "get",
                    f"{base}/ready",
                    f"model{which} readiness",
                    "v2",
                    None,
                    {200: ModelReady, 404: ErrorResponse, 503: ModelReady},
                    params,
                ),
                model_ready,
            ),
            (
                Operation(
                    "post",
                    f"{base}/infer",
                    f"inference with the model{which}: JSON tensors, or the binary tensor data extension "
                    "(Inference-Header-Content-Length; see docs/api.md)",
                    "v2",
                    InferRequest,
                    {200: InferResponse, 404: ErrorResponse, **unavailable},
                    params,
                ),
                infer,
            ),
        ]
    table += [
        (Operation("get", "/metrics", "Prometheus metrics", "operations", None, {200: "text/plain"}), metrics),
        (Operation("get", "/openapi.json", "this document", "operations", None, {200: "application/json"}), openapi),
    ]
    return table


def routes(table: list[tuple[Operation, Any]]) -> list[Route]:
    return [Route(op.path, handler, methods=[op.method.upper()]) for op, handler in table]
