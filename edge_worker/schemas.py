"""HTTP bodies: pydantic models with the size bounds from settings.

The /v1 request models are built per app and family (:func:`items_request`) because their
item types come from the family (``Serving``) and their limits from
:class:`~edge_worker.settings.EdgeSettings`; the same classes feed the OpenAPI document,
so the published schema states the limits the node enforces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import GenericAlias
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, create_model, model_validator

from models.family import Family
from nexus_wire.names import VISITOR_ID, anchored

VisitorId = Annotated[str, Field(min_length=1, max_length=128, pattern=anchored(VISITOR_ID))]
Labels = Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]], Field(min_length=1, max_length=16)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemsRequest(_Body):
    """A /v1 scoring request: one item or a list of items, in the two fields its family names."""

    one: ClassVar[str]
    many: ClassVar[str]

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (getattr(self, self.one) is None) == (getattr(self, self.many) is None):
            raise ValueError(f"give exactly one of '{self.one}' or '{self.many}'")
        return self

    def items(self) -> list[Any]:
        single = getattr(self, self.one)
        return [single] if single is not None else list(getattr(self, self.many) or [])


def _title(family: Family) -> str:
    """``emotion`` -> ``Emotion``: how the family's OpenAPI component names begin."""
    return "".join(part.capitalize() for part in re.split(r"[-_]", family.name))


def items_request(family: Family, limits: Mapping[str, int]) -> type[ItemsRequest]:
    """The family's /v1 request body under a node's limits (``EdgeSettings.limits``)."""
    serving = family.serving
    item = serving.item_type(limits)
    many: Any = Annotated[GenericAlias(list, (item,)), Field(min_length=1, max_length=limits[serving.max_items])]
    fields: dict[str, Any] = {serving.one: (item | None, None), serving.many: (many | None, None)}
    model = create_model(f"{_title(family)}Request", __base__=ItemsRequest, __doc__=serving.request_doc, **fields)
    model.one, model.many = serving.one, serving.many
    return model


def answer_model(family: Family, names: Sequence[str] = ()) -> type[BaseModel]:
    """The family's /v1 answer (documentation only: the handler builds a plain dict); ``names``:
    every model answering the route, when several families share it."""
    serving = family.serving
    entries = Field(description=serving.answer_doc) if serving.answer_doc else Field()
    which: dict[str, Any] = {"enum": list(names)} if len(names) > 1 else {"const": family.name}
    fields: dict[str, Any] = {
        "model": (str, Field(description="the model that answered", json_schema_extra=which)),
        "model_version": (str, Field()),
        serving.answer: (GenericAlias(list, (serving.answer_type,)), entries),
    }
    return create_model(f"{_title(family)}Response", **fields)


def route_query(family: Family, names: Sequence[str]) -> type[BaseModel]:
    """A /v1 scoring route's query: ``?model=`` picks which of the models serving it answers."""
    listed = ", ".join(f"{name} (default)" if i == 0 else name for i, name in enumerate(names))
    served: Any = Literal[tuple(names)]  # the served names, known once the node's settings are
    return create_model(
        f"{_title(family)}Query",
        __config__=ConfigDict(extra="forbid"),
        model=(served | None, Field(None, description=f"the model that answers: {listed}")),
    )


def feedback_request(text: Any) -> type[BaseModel]:
    """``POST /v1/feedback``'s body: a text (the family's item type) and its true labels."""
    return create_model(
        "FeedbackRequest",
        __base__=_Body,
        __doc__="A text with its true emotion labels, kept in the node's local store.",
        text=(text, Field()),
        labels=(Labels, Field()),
        visitor_id=(VisitorId | None, None),
    )


def outcome_request(session: Any) -> type[BaseModel]:
    """``POST /v1/funnel/outcome``'s body: a session (the family's item type) and whether it converted."""
    return create_model(
        "OutcomeRequest",
        __base__=_Body,
        __doc__="A funnel session and whether it converted, kept in the node's local store.",
        session=(session, Field()),
        converted=(StrictBool, Field()),
        visitor_id=(VisitorId | None, None),
    )


# --- responses (documentation only: handlers build plain dicts) -------------------------


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, naming the field or limit")


class StoredResponse(BaseModel):
    stored: bool
    id: int


class EraseResponse(BaseModel):
    visitor_id: str
    erased: int


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelEntry(BaseModel):
    name: str
    #: the version loaded, if any
    version: str | None
    ready: bool
    #: the manifest's tier (emotion: fast or accurate), once loaded
    tier: str | None
    #: the /v1 route it answers, and whether it answers it without ``?model=``
    route: str
    route_default: bool


class ModelIndex(BaseModel):
    models: list[ModelEntry]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


# --- Open Inference Protocol v2 (KServe) request/response ------------------------------
# With the binary tensor data extension the body is this JSON header, then raw tensor bytes
# (edge_worker/oip_http.py); the parameters the extension defines are typed, others pass.

TensorData = list[Any]
TensorName = Annotated[str, Field(min_length=1, max_length=64)]
#: as many inputs as a family has fields (the funnel's), with room to spare
MAX_INPUTS = 64


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputParameters(_Parameters):
    binary_data_size: (
        Annotated[StrictInt, Field(ge=0, le=2**53 - 1, description="bytes of this input after the JSON header")] | None
    ) = None


class OutputParameters(_Parameters):
    binary_data: StrictBool | None = Field(None, description="answer this output as raw bytes after the JSON header")


class RequestParameters(_Parameters):
    binary_data_output: StrictBool | None = Field(None, description="the default of binary_data for every output")


class InferInputTensor(_Body):
    name: TensorName
    shape: Annotated[list[Annotated[int, Field(ge=0, le=1_000_000)]], Field(min_length=1, max_length=4)]
    datatype: Annotated[str, Field(min_length=1, max_length=16)]
    data: TensorData | None = Field(None, description="row-major elements, unless parameters.binary_data_size is set")
    parameters: InputParameters | None = None


class RequestedOutput(_Body):
    name: TensorName
    parameters: OutputParameters | None = None


class InferRequest(_Body):
    id: Annotated[str, Field(max_length=128)] | None = None
    parameters: RequestParameters | None = None
    inputs: Annotated[list[InferInputTensor], Field(min_length=1, max_length=MAX_INPUTS)]
    outputs: Annotated[list[RequestedOutput], Field(max_length=4)] | None = None


class OutputTensorParameters(BaseModel):
    binary_data_size: int


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(None, description="absent when the output is sent as binary data")
    parameters: OutputTensorParameters | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


class ConsistencyQuery(_Body):
    """``GET /v1/audit/consistency``: two sizes of the node's audit log (query parameters)."""

    first: int = Field(ge=1, le=2**53, description="size of the older tree head")
    second: int | None = Field(None, ge=1, le=2**53, description="size of the newer tree head (default: the newest)")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.second is not None and self.first > self.second:
            raise ValueError(f"first ({self.first}) must not exceed second ({self.second})")
        return self


class SignedTreeHead(BaseModel):
    size: int
    root: str
    time: str
    key_id: str
    signature: str


class ConsistencyResponse(BaseModel):
    """RFC 6962 PROOF(first.size, D[second.size]) with both signed heads (hex hashes)."""

    first: SignedTreeHead
    second: SignedTreeHead
    proof: list[str]
