"""OpenAPI 3.1 document built from the route table and the pydantic body models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from edge_worker.schemas import ErrorResponse

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    request: type[BaseModel] | None = None
    #: status -> body model, or a media type for non-JSON bodies
    responses: dict[int, type[BaseModel] | str] = field(default_factory=dict)
    #: path parameter -> JSON schema
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the query parameters, one field each
    query: type[BaseModel] | None = None


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=_REF)
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": _REF.format(model=model.__name__)}


def _response(components: _Components, body: type[BaseModel] | str, description: str) -> dict[str, Any]:
    if isinstance(body, str):
        schema = {"type": "object"} if body == "application/json" else {"type": "string"}
        return {"description": description, "content": {body: {"schema": schema}}}
    return {"description": description, "content": {"application/json": {"schema": components.ref(body)}}}


def build_openapi(operations: list[Operation], title: str, version: str, description: str) -> dict[str, Any]:
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        responses = {
            str(status): _response(components, body, "success" if status < 300 else "refused")
            for status, body in op.responses.items()
        }
        if op.request is not None:
            for status, why in (
                (400, "body is not JSON"),
                (413, "body over the size limit"),
                (422, "a field breaks the schema"),
            ):
                responses.setdefault(str(status), _response(components, ErrorResponse, why))
        entry: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": f"{op.method}_{op.path}",
            "responses": responses,
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schema} for name, schema in op.params.items()
        ]
        if op.query is not None:
            schema = op.query.model_json_schema()
            parameters += [
                {"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": prop}
                for name, prop in schema["properties"].items()
            ]
            responses.setdefault("422", _response(components, ErrorResponse, "a query parameter breaks the schema"))
        if parameters:
            entry["parameters"] = parameters
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": components.ref(op.request)}},
            }
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": components.schemas},
    }
