"""The Flower messages between the hub's ServerApp and an edge's ClientApp, beside the arrays.

A round's instruction travels as a config record (:data:`CONFIG`) of hyphenated keys: the
ServerApp writes :meth:`TrainInstruction.to_config` / :meth:`EvaluateInstruction.to_config`,
Flower's strategy adds its own keys to the same record (``server-round`` on every message,
``proximal-mu`` on FedProx's), and the ClientApp reads it back with ``from_config``. The
names of the records, of the reply metrics Flower's strategies read, and of the receipts'
delivery (federated/receipts.py) are here too. Plain mappings only: the federated apps wrap
them in Flower's records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, Literal, Self, get_args, get_origin, get_type_hints

from nexus_wire.runconfig import Compression, RunConfig

#: the records of a message; Flower's strategies use these names (their ``*record_key`` arguments)
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
#: reply metrics the ServerApp reads; Flower's strategies weight the aggregate by NUM_EXAMPLES
NUM_EXAMPLES, TRAIN_LOSS = "num-examples", "train-loss"
#: the ClientApp's answer to the selection query: its node config's tags
NODE_CONFIG = "node-config"
#: receipts for a node's earlier replies: a config record holding a list of canonical-JSON receipts
RECEIPTS_RECORD, RECEIPTS_FIELD = "nexus-receipts", "receipts"
#: the message that delivers the receipts still owed when the rounds end: Flower's message
#: types are "category.action", and the ClientApp answers this one with ``@app.query(RECEIPTS_ACTION)``
RECEIPTS_ACTION = "receipts"
RECEIPTS_MESSAGE = f"query.{RECEIPTS_ACTION}"
#: the last round's evaluate message also carries the run's base (the stable version) as this
#: array record, and each node answers its metrics on it beside the candidate's, each key with
#: this prefix (one metric record: Flower's strategies average every key of a reply's records)
BASELINE_ARRAYS, BASELINE_PREFIX = "baseline-arrays", "baseline-"
#: keys Flower's strategy writes into a round's config record itself
SERVER_ROUND, PROXIMAL_MU = "server-round", "proximal-mu"

#: the values an instruction holds (Flower's ConfigScalar less bytes)
ConfigValue = str | int | float | bool


@dataclass(frozen=True)
class Wire:
    """Where one field of an instruction appears in the config record."""

    key: str
    #: Flower's strategy writes it; ``to_config`` leaves it out at its default, so the
    #: ServerApp's record holds only the ServerApp's keys
    by_flower: bool = False


@dataclass(frozen=True)
class _Instruction:
    """``to_config``/``from_config`` for a frozen dataclass whose fields are ``Annotated[T, Wire(key)]``."""

    KIND: ClassVar[str]

    def to_config(self) -> dict[str, ConfigValue]:
        """The config record's keys and values."""
        config: dict[str, ConfigValue] = {}
        wires = _wires(type(self))
        for f in fields(self):
            value, (wire, _) = getattr(self, f.name), wires[f.name]
            if not (wire.by_flower and value == f.default):
                config[wire.key] = value
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The instruction in a config record; raises ValueError (one line) naming the first bad key.
        Keys it does not know (Flower's own) are not its to judge."""
        values: dict[str, Any] = {}
        wires = _wires(cls)
        for f in fields(cls):
            wire, kind = wires[f.name]
            if wire.key in config:
                values[f.name] = _checked(f"{cls.KIND} instruction {wire.key}", config[wire.key], kind)
            elif not wire.by_flower:
                raise ValueError(f"{cls.KIND} instruction: {wire.key} missing")
        return cls(**values)


#: what a value of each field type must be
_EXPECTED = {str: "a string", int: "an integer", float: "a finite number"}


def _wires(cls: type) -> dict[str, tuple[Wire, Any]]:
    """field name -> (its Wire, its type)."""
    out = {}
    for name, hint in get_type_hints(cls, include_extras=True).items():
        if get_origin(hint) is Annotated:
            kind, *meta = get_args(hint)
            out[name] = (next(m for m in meta if isinstance(m, Wire)), kind)
    return out


def _checked(where: str, value: Any, kind: Any) -> ConfigValue:
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        if value in choices:
            return value
        raise ValueError(f"{where}={value!r}: expected one of {', '.join(map(repr, choices))}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and number and math.isfinite(value):
        return float(value)
    if kind is int and number and isinstance(value, int):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"{where}={value!r}: expected {_EXPECTED[kind]}")


@dataclass(frozen=True)
class TrainInstruction(_Instruction):
    """What a node trains: the model spec (JSON), epochs, learning rate, seed and update encoding."""

    KIND: ClassVar[str] = "train"

    model_spec: Annotated[str, Wire("model-spec")]
    local_epochs: Annotated[int, Wire("local-epochs")]
    #: 0: the family's default learning rate
    lr: Annotated[float, Wire("lr")]
    seed: Annotated[int, Wire("seed")]
    compression: Annotated[Compression, Wire("compression")]
    #: FedProx's proximal term; no other strategy has one
    proximal_mu: Annotated[float, Wire(PROXIMAL_MU, by_flower=True)] = 0.0
    server_round: Annotated[int, Wire(SERVER_ROUND, by_flower=True)] = 0

    @classmethod
    def from_run(cls, run: RunConfig, model_spec: str) -> TrainInstruction:
        """The run's instruction; ``run.proximal_mu`` reaches the nodes only through FedProx."""
        return cls(model_spec, run.local_epochs, run.lr, run.seed, run.compression)


@dataclass(frozen=True)
class EvaluateInstruction(_Instruction):
    """What a node evaluates: the model spec (JSON) and the seed of its held-out split."""

    KIND: ClassVar[str] = "evaluate"

    model_spec: Annotated[str, Wire("model-spec")]
    seed: Annotated[int, Wire("seed")]

    @classmethod
    def from_run(cls, run: RunConfig, model_spec: str) -> EvaluateInstruction:
        return cls(model_spec, run.seed)
