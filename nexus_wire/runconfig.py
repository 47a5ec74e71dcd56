"""The configuration of one federated run: one typed record, wherever it crosses a process.

The hub's ``POST /v1/rounds`` body and the ``nexus hub rounds start`` flags (the API keys),
the ``flwr run --run-config`` string the hub submits, and Flower's run config the ServerApp
and the ClientApp read (hyphenated keys) are all :class:`RunConfig`. Flower accepts only
run-config keys its app declares, so ``federated/flower_app/pyproject.toml`` lists the same
keys and defaults; a test keeps the two equal. Adding a key is one field here (and its line
in that file).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from nexus_wire.names import MODEL_NAME, anchored

#: a model family's name; which families exist is the registry's to say (models/families.py)
Model = Annotated[str, StringConstraints(pattern=anchored(MODEL_NAME))]
Strategy = Literal["fedavgm", "fedavg", "fedprox", "fedadam", "fedtrimmedavg", "krum"]
Compression = Literal["int8", "fp16", "none"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
#: the characters of a node selection, "region=1,2;tier=gold" (federated/settings.py parses it)
SELECT_PATTERN = r"^[A-Za-z0-9_.,;=-]{0,256}$"


@dataclass(frozen=True)
class Key:
    """Where one field of :class:`RunConfig` appears outside Python."""

    #: its key in Flower's run config; None: the hub keeps it to itself
    flower: str | None
    #: accepted in the hub's ``POST /v1/rounds`` body, so a flag of ``nexus hub rounds start``
    api: bool = False
    #: the CLI flag, where it is not ``--`` and the field name with hyphens
    flag: str | None = None
    help: str | None = None
    #: the CLI flag may be repeated; its values are joined with this
    join: str | None = None


class RunConfig(BaseModel):
    """Every key of a federated run, its type, default and bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Annotated[Model, Key("model", api=True, help="the model family trained")] = "funnel"
    rounds: Annotated[int, Field(ge=1, le=1000), Key("num-rounds", api=True, help="federated rounds")] = 3
    #: FedAvg with server momentum: it closes the gap to central training (docs/federated.md, "The gap")
    strategy: Annotated[Strategy, Key("strategy", api=True, help="how the updates are aggregated")] = "fedavgm"
    min_nodes: Annotated[
        int, Field(ge=1, le=100_000), Key("min-nodes", api=True, help="nodes a round needs (Flower waits for them)")
    ] = 2
    fraction: Annotated[
        float,
        Field(gt=0, le=1),
        Key("fraction", api=True, help="share of the online nodes asked to train each round"),
    ] = 1.0
    select: Annotated[
        str,
        StringConstraints(pattern=SELECT_PATTERN),
        Key(
            "select",
            api=True,
            help="node tags, e.g. region=1,2 (repeat for several tags; default: every node)",
            join=";",
        ),
    ] = ""
    #: 0: the family's default (its task's ``federated_local_epochs``)
    local_epochs: Annotated[
        int,
        Field(ge=0, le=1000),
        Key("local-epochs", api=True, help="local epochs per round (0: the model family's default)"),
    ] = 0
    compression: Annotated[Compression, Key("compression", api=True, help="update encoding")] = "int8"
    timeout_s: Annotated[
        float,
        Field(gt=0, le=24 * 3600.0),
        Key("timeout", api=True, flag="--timeout", help="seconds to wait for the replies of one step"),
    ] = 120.0
    deadline_s: Annotated[
        float,
        Field(gt=0, le=7 * 24 * 3600.0),
        Key(None, api=True, flag="--deadline", help="seconds the whole run may take before it is failed"),
    ] = 1800.0
    #: 0: the family's default learning rate
    lr: Annotated[float, Field(ge=0, le=100.0, allow_inf_nan=False), Key("lr")] = 0.0
    proximal_mu: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False), Key("proximal-mu")] = 0.01
    #: fedavgm: the share of the last round's step the server adds to this round's average update
    server_momentum: Annotated[
        float, Field(ge=0, lt=1, allow_inf_nan=False), Key("server-momentum", help="fedavgm's server momentum")
    ] = 0.5
    max_update_norm: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False), Key("max-update-norm")] = 1e4
    #: numpy's legacy seeds end at 2**32 - 1 (and Flower's config ints at 2**63 - 1)
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), Key("seed", help="seed of data splits, shuffles and noise")] = 0
    #: a bundle folder, or a JSON model spec (weights are then initialised)
    base: Annotated[str, StringConstraints(max_length=4096), Key("base")] = ""
    #: the final arrays (.npz); the per-round summary goes beside it (.json)
    output_path: Annotated[str, StringConstraints(max_length=4096), Key("output-path")] = ""
    #: differential privacy of each node's update (federated/audit_mod.py): 0 = off
    dp_noise_multiplier: Annotated[float, Field(ge=0, le=1e3, allow_inf_nan=False), Key("dp-noise-multiplier")] = 0.0
    dp_clipping_norm: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False), Key("dp-clipping-norm")] = 1.0
    #: Flower's SecAgg+ (federated/secure_aggregation.py): the hub sees only the sum of the updates
    secure_aggregation: Annotated[
        bool,
        Key(
            "secure-aggregation",
            api=True,
            help="SecAgg+: the hub sees only the sum of the updates (needs --min-nodes >= 3; not with krum, "
            "fedtrimmedavg)",
        ),
    ] = False
    #: the hub's promotion gate (hub/promotion_gate.py) after the run: promote the candidate
    #: to stable only when it beat the stable version on the nodes' evaluation data by the margin
    auto_promote: Annotated[
        bool,
        Key(
            None,
            api=True,
            help="promote the candidate to stable if the promotion gate finds it better than the stable "
            "version by --promote-margin",
        ),
    ] = False
    promote_margin: Annotated[
        float,
        Field(ge=0, le=1, allow_inf_nan=False),
        Key(None, api=True, help="how much better (on the run's score) --auto-promote needs the candidate to be"),
    ] = 0.002

    @model_validator(mode="after")
    def _combination(self) -> RunConfig:
        _refuse_combination(self)
        return self

    @property
    def dp_enabled(self) -> bool:
        return self.dp_noise_multiplier > 0

    @classmethod
    def from_flower(cls, config: Mapping[str, Any]) -> RunConfig:
        """Flower's run config; raises ValueError (one line) naming the first bad key."""
        names = {key.flower: name for name, key in KEYS.items() if key.flower is not None}
        # other apps' keys (and Flower's own) are not ours to judge
        try:
            return cls.model_validate({names[k]: v for k, v in config.items() if k in names})
        except ValidationError as exc:
            first = exc.errors()[0]
            if not first["loc"]:  # a combination of keys (combination_problem)
                raise ValueError(f"run config: {first['msg']}") from None
            key = KEYS[str(first["loc"][0])].flower
            raise ValueError(f"run config {key}={first.get('input')!r}: {first['msg']}") from None

    def to_flower(self) -> dict[str, Any]:
        """Flower's run config (the keys of ``federated/flower_app/pyproject.toml``)."""
        return {key.flower: getattr(self, name) for name, key in KEYS.items() if key.flower is not None}

    def to_toml(self) -> str:
        """The ``flwr run --run-config`` argument: ``num-rounds=2 model="funnel" ...`` (TOML values)."""

        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            return repr(v) if isinstance(v, (int, float)) else json.dumps(str(v))

        return " ".join(f"{k}={value(v)}" for k, v in self.to_flower().items())

    def api_view(self) -> dict[str, Any]:
        """The API keys but the model (a run's record holds that on its own): a run's ``config``."""
        return {name: getattr(self, name) for name in API_FIELDS if name != "model"}


#: strategies that need every update on its own, which secure aggregation never shows the hub
NEEDS_EACH_UPDATE = ("krum", "fedtrimmedavg")
#: SecAgg+ masks a node's update with pairwise masks of the others: with two nodes, each knows the other's
SECURE_MIN_NODES = 3


def combination_problem(config: Any) -> str | None:
    """Why these keys cannot go together (``config`` has the fields of :class:`RunConfig`), or None."""
    if not getattr(config, "secure_aggregation", False):
        return None
    if config.strategy in NEEDS_EACH_UPDATE:
        return f"secure aggregation shows the hub only the sum of the updates; {config.strategy} needs each one"
    if config.min_nodes < SECURE_MIN_NODES:
        return f"secure aggregation needs min_nodes >= {SECURE_MIN_NODES} (got {config.min_nodes})"
    return None


def _refuse_combination(config: Any) -> None:
    problem = combination_problem(config)
    if problem is not None:
        raise PydanticCustomError("combination", "{problem}", {"problem": problem})


def _key(name: str) -> Key:
    return next(m for m in RunConfig.model_fields[name].metadata if isinstance(m, Key))


KEYS: dict[str, Key] = {name: _key(name) for name in RunConfig.model_fields}
API_FIELDS: tuple[str, ...] = tuple(name for name, key in KEYS.items() if key.api)


def api_model(name: str, models: Sequence[str]) -> type[BaseModel]:
    """The hub's request body: the API keys, the model required and one of ``models``, any other key refused."""

    def known(value: str) -> str:
        if value not in models:
            quoted = [repr(m) for m in models]
            expected = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
            # the words and type pydantic gives a Literal, which this field was before the registry
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    fields: dict[str, Any] = {n: (RunConfig.model_fields[n].annotation, RunConfig.model_fields[n]) for n in API_FIELDS}
    fields["model"] = (Annotated[str, AfterValidator(known)], Field())

    def combination(body: Any) -> Any:
        _refuse_combination(body)
        return body

    validators: dict[str, Any] = {"combination": model_validator(mode="after")(combination)}
    return create_model(name, __config__=ConfigDict(extra="forbid"), __validators__=validators, **fields)


def flower_key(name: str) -> str:
    """The run-config key of a field (``dp_noise_multiplier`` -> ``dp-noise-multiplier``)."""
    key = KEYS[name].flower
    if key is None:
        raise KeyError(f"{name} is not in Flower's run config")
    return key


def add_flags(parser: argparse.ArgumentParser, names: Iterable[str], **overrides: Mapping[str, Any]) -> None:
    """A flag per named field, with its type, choices, default and help; ``overrides`` replaces
    argparse keywords of a field (``model={"required": True}``). Bounds are the reader's to check."""
    for name in names:
        field, key = RunConfig.model_fields[name], KEYS[name]
        flag = key.flag or "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "help": key.help}
        if field.annotation is bool:
            kwargs["action"] = "store_true"
        elif get_origin(field.annotation) is Literal:
            kwargs["choices"] = get_args(field.annotation)
        else:
            kwargs["type"], kwargs["metavar"] = field.annotation, flag[2:].replace("-", "_").upper()
        if key.join is not None:
            kwargs["action"] = "append"
        else:
            kwargs["default"] = field.default
        kwargs.update(overrides.get(name, {}))
        parser.add_argument(flag, **kwargs)


def flag_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The values of the flags :func:`add_flags` made, by field name (repeated ones joined)."""
    values: dict[str, Any] = {}
    for name in names:
        value, join = getattr(args, name), KEYS[name].join
        values[name] = join.join(value or []) if join is not None else value
    return values
