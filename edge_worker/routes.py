"""HTTP handlers of the edge node and the operation table the OpenAPI document is built from."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    ModelIndex,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    StoredResponse,
    answer_model,
    feedback_request,
    items_request,
    outcome_request,
    route_query,
)
from edge_worker.settings import EdgeSettings
from edge_worker.state import EdgeState
from edge_worker.store import LocalStore
from models.errors import NexusError
from models.families import Families
from models.family import Family, Serving
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
# Built per /v1 route from the served families' records (models.family.Serving): the scoring
# route, and the local-store route that collects the family's labelled examples. Families
# whose Serving names the same path (the emotion tiers: emotion, emotion-accurate) share one
# route: ``?model=`` picks which answers, the route's default (:func:`route_models`) otherwise,
# and their store route is registered once (one table feeds every tier's training).

Handler = Callable[[Request], Awaitable[Response]]


def route_models(settings: EdgeSettings, families: Families) -> dict[str, tuple[str, ...]]:
    """/v1 path -> the served models answering it, the one that answers without ``?model=`` first:
    the one ``settings.default_models`` names there, else the first of ``settings.models``."""
    by_path: dict[str, list[str]] = {}
    for name in settings.models:
        by_path.setdefault(families.get(name).serving.path, []).append(name)
    shared: dict[str, tuple[str, ...]] = {}
    for path, names in by_path.items():
        default = next((name for name in settings.default_models if name in names), names[0])
        shared[path] = (default, *(name for name in names if name != default))
    return shared


def _request_shape(serving: Serving) -> tuple[Any, ...]:
    """What a shared route's one request body and answer rest on: its families must agree on it."""
    return serving.one, serving.many, serving.max_items, serving.answer, serving.store_route, dict(serving.limits)


def _scorer(path: str, families: Sequence[Family], body: type[ItemsRequest], query: type[BaseModel]) -> Handler:
    default = families[0].name
    servings = {family.name: family.serving for family in families}
    listed = ", ".join([f"{default} (default)", *list(servings)[1:]])

    def pick(request: Request) -> str:
        try:
            parsed: Any = query.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise ApiError(422, f"{describe(exc)}; {path} serves {listed}") from None
        return parsed.model or default

    async def score(request: Request) -> Response:
        state = _state(request)
        # no query string at all (the common call): no parsing on the hot path
        name = pick(request) if request.scope.get("query_string") else default
        parsed = await parse_body(request, body, state.settings.max_body_bytes)
        result = await state.batchers[name].submit(parsed.items())
        serving = servings[name]
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


def family_operations(group: Sequence[Family], limits: Mapping[str, int]) -> list[tuple[Operation, Any]]:
    """The scoring route of the served families sharing one path (the default first), and its
    local-store route if it has one."""
    family, serving, unavailable = group[0], group[0].serving, {503: ErrorResponse}
    for other in group[1:]:
        if _request_shape(other.serving) != _request_shape(serving):
            raise NexusError(
                f"models {family.name} and {other.name} share {serving.path} but not its request, answer and store"
                " fields (models.family.Serving): give one of them a path of its own"
            )
    names = [member.name for member in group]
    request = items_request(family, limits)
    query = route_query(family, names)
    summary = serving.summary if len(names) == 1 else f"{serving.summary} (?model= picks {', '.join(names)})"
    table: list[tuple[Operation, Any]] = [
        (
            Operation(
                "post",
                serving.path,
                summary,
                "inference",
                request,
                {200: answer_model(family, names), **unavailable},
                query=query,
            ),
            _scorer(serving.path, group, request, query),
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


async def model_index(request: Request) -> Response:
    """Every model this node serves: loaded version, readiness, tier, and the /v1 route it answers."""
    state = _state(request)
    entries = []
    for path, names in route_models(state.settings, state.families).items():
        for name in names:
            served = state.repository.get(name)
            entries.append(
                {
                    "name": name,
                    "version": None if served is None else served.version,
                    "ready": served is not None,
                    "tier": None if served is None else served.predictor.bundle.tier,
                    "route": path,
                    "route_default": name == names[0],
                }
            )
    order = {name: i for i, name in enumerate(state.repository.models)}
    return JSONResponse({"models": sorted(entries, key=lambda entry: order[entry["name"]])})


# The /versions/{version} forms (tritonclient's, given a model_version) take only the loaded version.


async def model_metadata(request: Request) -> Response:
    state = _state(request)
    family, served = oip.resolve(state, request.path_params["name"], request.path_params.get("version"))
    return JSONResponse(oip.metadata(family, served, state.repository.versions(served.name)))


async def model_ready(request: Request) -> Response:
    state, name, version = _state(request), request.path_params["name"], request.path_params.get("version")
    is_ready = oip.model_ready(state, name, version)
    served = state.repository.get(name)
    if not is_ready and version and served is not None:
        # another version than the loaded one never becomes ready here: not found, not "try later"
        raise ApiError(404, f"model {name!r} serves version {served.version}, not {version!r}")
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
    # the routes of the served families, scoring ones first; a store route once, for the first route naming it
    served = [
        family_operations([state.families.get(m) for m in names], state.limits[names[0]])
        for names in route_models(state.settings, state.families).values()
    ]
    table = [ops[0] for ops in served]
    stores: dict[str, tuple[Operation, Any]] = {}
    for ops in served:
        for op in ops[1:]:
            stores.setdefault(op[0].path, op)
    table += stores.values()
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
    table.append(
        (
            Operation(
                "get",
                "/v2/models",
                "the models this node serves: loaded version, readiness, tier, /v1 route",
                "v2",
                None,
                {200: ModelIndex},
            ),
            model_index,
        )
    )
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
