"""HTTP bodies: pydantic models with the size bounds from settings.

The request models are built per app (:func:`build_schemas`) because their limits come
from :class:`~edge_worker.settings.EdgeSettings`; the same classes feed the OpenAPI
document, so the published schema states the limits the node enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator

from edge_worker.settings import EdgeSettings

#: at least one non-blank character
NON_BLANK = r"\S"
VISITOR_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
VisitorId = Annotated[str, Field(min_length=1, max_length=128, pattern=VISITOR_ID_PATTERN)]
# A session field value: numbers, booleans, or short category strings (Month, VisitorType...).
# Integers stay within float64's exact range: the featurizer turns them into floats.
SAFE_INT = 2**53
SessionValue = (
    Annotated[StrictInt, Field(ge=-SAFE_INT, le=SAFE_INT)]
    | StrictFloat
    | StrictBool
    | Annotated[str, Field(max_length=64)]
)
Session = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=64)], SessionValue], Field(min_length=1, max_length=64)
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _exactly_one(model: BaseModel, one: str, many: str) -> None:
    if (getattr(model, one) is None) == (getattr(model, many) is None):
        raise ValueError(f"give exactly one of '{one}' or '{many}'")


@dataclass(frozen=True)
class Schemas:
    EmotionRequest: type[BaseModel]
    FunnelRequest: type[BaseModel]
    FeedbackRequest: type[BaseModel]
    OutcomeRequest: type[BaseModel]


def build_schemas(settings: EdgeSettings) -> Schemas:
    Text = Annotated[str, Field(min_length=1, max_length=settings.max_text_chars, pattern=NON_BLANK)]

    class EmotionRequest(_Body):
        """One text or a list of texts."""

        text: Text | None = None
        texts: Annotated[list[Text], Field(min_length=1, max_length=settings.max_texts)] | None = None

        @model_validator(mode="after")
        def _one_of(self) -> EmotionRequest:
            _exactly_one(self, "text", "texts")
            return self

        def items(self) -> list[str]:
            return [self.text] if self.text is not None else list(self.texts or [])

    class FunnelRequest(_Body):
        """One session or a list of sessions (Online Shoppers fields, as in the model's manifest)."""

        session: Session | None = None
        sessions: Annotated[list[Session], Field(min_length=1, max_length=settings.max_sessions)] | None = None

        @model_validator(mode="after")
        def _one_of(self) -> FunnelRequest:
            _exactly_one(self, "session", "sessions")
            return self

        def items(self) -> list[dict[str, Any]]:
            return [self.session] if self.session is not None else list(self.sessions or [])

    class FeedbackRequest(_Body):
        """A text with its true emotion labels, kept in the node's local store."""

        text: Text
        labels: Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]], Field(min_length=1, max_length=16)]
        visitor_id: VisitorId | None = None

    class OutcomeRequest(_Body):
        """A funnel session and whether it converted, kept in the node's local store."""

        session: Session
        converted: StrictBool
        visitor_id: VisitorId | None = None

    return Schemas(EmotionRequest, FunnelRequest, FeedbackRequest, OutcomeRequest)


# --- responses (documentation only: handlers build plain dicts) -------------------------


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, naming the field or limit")


class EmotionResult(BaseModel):
    scores: dict[str, float]
    labels: list[str] = Field(description="labels whose score reaches the model's threshold")
    top: str


class EmotionResponse(BaseModel):
    model: Literal["emotion"]
    model_version: str
    results: list[EmotionResult]


class FunnelResponse(BaseModel):
    model: Literal["funnel"]
    model_version: str
    probabilities: list[float] = Field(description="P(purchase) per session, in request order")


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


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


# --- Open Inference Protocol v2 (KServe) request/response ------------------------------

TensorData = list[Any]


class InferInputTensor(_Body):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    shape: Annotated[list[Annotated[int, Field(ge=0, le=1_000_000)]], Field(min_length=1, max_length=4)]
    datatype: Annotated[str, Field(min_length=1, max_length=16)]
    data: TensorData
    parameters: dict[str, Any] | None = None


class RequestedOutput(_Body):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    parameters: dict[str, Any] | None = None


class InferRequest(_Body):
    id: Annotated[str, Field(max_length=128)] | None = None
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[InferInputTensor], Field(min_length=1, max_length=4)]
    outputs: Annotated[list[RequestedOutput], Field(max_length=4)] | None = None


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]
