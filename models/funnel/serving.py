"""How the edge serves the funnel family: sessions in, P(purchase) out (/v1/funnel/score and OIP v2)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import Field, StrictBool, StrictFloat, StrictInt, TypeAdapter

from models.family import Serving, Tensor
from models.funnel.featurizer import Featurizer
from models.predictor import Predictor

#: decimals of a probability in /v1 answers (the v2 tensors carry the full float32 values)
DECIMALS = 6
LIMITS = {"max_sessions": 256}
# A session field value: numbers, booleans, or short category strings (Month, VisitorType...).
# Integers stay within float64's exact range: the featurizer turns them into floats; floats
# are finite and as bounded (an inf or a NaN would come back as a probability no JSON holds).
SAFE_INT = 2**53
SessionValue = (
    Annotated[StrictInt, Field(ge=-SAFE_INT, le=SAFE_INT)]
    | Annotated[StrictFloat, Field(ge=-SAFE_INT, le=SAFE_INT, allow_inf_nan=False)]
    | StrictBool
    | Annotated[str, Field(max_length=64)]
)
Session = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=64)], SessionValue], Field(min_length=1, max_length=64)
]
_SESSION: TypeAdapter[dict[str, Any]] = TypeAdapter(Session)


def session_type(limits: Mapping[str, int]) -> Any:
    return Session


def rows(probabilities: np.ndarray, predictor: Predictor) -> list[float]:
    return np.asarray(probabilities, dtype=np.float32).astype(np.float64).tolist()


def _answer(probability: float) -> float:
    return round(probability, DECIMALS)


#: OIP v2: one BYTES tensor of sessions, each a JSON object (or, in a JSON request, the object itself)
SESSION_INPUT = Tensor("session", "BYTES", (-1,))
_INTEGERS = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
#: a numeric field may come as any number type, a category as text or as its integer code
_NUMBERS = ("FP32", "FP16", *_INTEGERS)


@functools.lru_cache(maxsize=8)
def _oip_inputs(predictor: Predictor) -> tuple[tuple[Tensor, ...], ...]:
    """One tensor per field the version's featurizer reads (what a dataframe holds, column by
    column; advertised), or the one ``session`` tensor."""
    featurizer = Featurizer.from_spec(predictor.bundle.manifest["featurizer"])
    columns = (
        *(Tensor(f.name, "FP64", (-1,), _NUMBERS) for f in featurizer.numeric),
        *(Tensor(c.name, "BYTES", (-1,), _INTEGERS) for c in featurizer.categorical),
        *(Tensor(name, "BOOL", (-1,)) for name in featurizer.boolean),
    )
    return columns, (SESSION_INPUT,)


def _oip_session(elements: Mapping[str, Any], limits: Mapping[str, int]) -> dict[str, Any]:
    """A session from its field tensors' elements, or from a ``session`` element (JSON text or the object)."""
    value = elements.get(SESSION_INPUT.name, elements)
    if isinstance(value, str):
        return _SESSION.validate_json(value)
    return _SESSION.validate_python(value, strict=False)


def _oip_output(manifest: Mapping[str, Any]) -> Tensor:
    return Tensor("probability", "FP32", (-1,))


def _oip_values(answer_rows: Sequence[float]) -> np.ndarray:
    return np.asarray(answer_rows, dtype=np.float32)


SERVING = Serving(
    path="/v1/funnel/score",
    summary="P(purchase) of one or more sessions",
    one="session",
    many="sessions",
    request_doc="One session or a list of sessions (Online Shoppers fields, as in the model's manifest).",
    limits=LIMITS,
    max_items="max_sessions",
    item_type=session_type,
    rows=rows,
    answer="probabilities",
    answer_json=_answer,
    answer_type=float,
    answer_doc="P(purchase) per session, in request order",
    oip_inputs=_oip_inputs,
    oip_output=_oip_output,
    oip_item=_oip_session,
    oip_values=_oip_values,
    store_route="/v1/funnel/outcome",
)
