"""The instructions a round's config record carries (nexus_wire/messages.py): what the ServerApp
writes, what Flower's strategy adds, what the ClientApp reads back."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from federated.client_app import make_client_app
from federated.local_grid import LocalGrid
from federated.server_app import run_rounds
from models.families import FAMILIES
from nexus_wire.messages import ARRAYS, CONFIG, EvaluateInstruction, TrainInstruction
from nexus_wire.runconfig import RunConfig
from tests.support.federated import funnel_spec
from tests.support.sessions import synthetic_sessions


def test_the_serverapp_writes_the_hyphenated_keys_it_always_wrote() -> None:
    run = RunConfig(local_epochs=3, lr=0.05, seed=7, compression="fp16", proximal_mu=0.5)
    assert TrainInstruction.from_run(run, "{}").to_config() == {
        "model-spec": "{}",
        "local-epochs": 3,
        "lr": 0.05,
        "seed": 7,
        "compression": "fp16",
    }
    assert EvaluateInstruction.from_run(run, "{}").to_config() == {"model-spec": "{}", "seed": 7}


def test_an_instruction_round_trips_and_leaves_other_keys_alone() -> None:
    train = TrainInstruction("{}", 2, 0.0, 1, "int8", proximal_mu=0.1, server_round=4)
    assert TrainInstruction.from_config(train.to_config()) == train
    assert TrainInstruction.from_config({**train.to_config(), "flower-own-key": b"x"}) == train
    lr = TrainInstruction.from_config({**train.to_config(), "lr": 1}).lr
    assert isinstance(lr, float) and lr == 1.0


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("seed", True, r"^train instruction seed=True: expected an integer$"),
        ("local-epochs", 1.5, "local-epochs=1.5: expected an integer"),
        ("lr", float("nan"), "lr=nan: expected a finite number"),
        ("compression", "zip", "compression='zip': expected one of 'int8', 'fp16', 'none'"),
        ("server-round", "3", "server-round='3': expected an integer"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_its_key(key: str, value: Any, match: str) -> None:
    config = {**TrainInstruction("{}", 1, 0.0, 0, "int8").to_config(), key: value}
    with pytest.raises(ValueError, match=match):
        TrainInstruction.from_config(config)


def test_a_missing_key_is_named_but_flowers_own_may_be_absent() -> None:
    with pytest.raises(ValueError, match=r"^evaluate instruction: model-spec missing$"):
        EvaluateInstruction.from_config({"seed": 0})
    train = TrainInstruction.from_config(TrainInstruction("{}", 1, 0.0, 0, "int8").to_config())
    assert (train.server_round, train.proximal_mu) == (0, 0.0)


def _funnel_grid(mods: list[Any]) -> tuple[LocalGrid, Any]:
    shares = {n: synthetic_sessions(200, seed=n, region=n) for n in (1, 2)}
    spec = funnel_spec([s for sessions, _ in shares.values() for s in sessions])
    task = FAMILIES.get("funnel").task
    data = {n: task.featurize(spec, sessions, labels) for n, (sessions, labels) in shares.items()}
    app = make_client_app(lambda node_config, _: data[node_config["partition"]], mods=mods)
    return LocalGrid(app, {n: {"partition": n} for n in data}), spec


def test_flowers_strategy_adds_the_round_and_fedprox_its_mu() -> None:
    seen: list[TrainInstruction] = []

    def spy(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type == "train":
            seen.append(TrainInstruction.from_config(msg.content.config_records[CONFIG]))
        return call_next(msg, context)

    grid, spec = _funnel_grid([spy])
    run = RunConfig(rounds=2, strategy="fedprox", proximal_mu=0.25, seed=3)
    run_rounds(grid, run, spec, FAMILIES.get("funnel").task.init_weights(spec, 0))
    assert sorted((i.server_round, i.proximal_mu, i.seed) for i in seen) == [(1, 0.25, 3)] * 2 + [(2, 0.25, 3)] * 2


def test_the_clientapp_answers_a_bad_instruction_with_its_one_line_error() -> None:
    grid, spec = _funnel_grid([])
    config: dict[str, Any] = {**TrainInstruction(spec.to_json(), 1, 0.0, 0, "int8").to_config(), "lr": "fast"}
    content = RecordDict({ARRAYS: ArrayRecord(), CONFIG: ConfigRecord(config)})
    [reply] = grid.send_and_receive([grid.create_message(content, "train", 1, "g")])
    assert reply.error.reason == "error: NexusError: train instruction lr='fast': expected a finite number"
