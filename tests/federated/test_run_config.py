"""The one run-configuration record (nexus_wire/runconfig.py) and the places that must agree with it."""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

import pytest
from flwr.common.config import parse_config_args

from federated.settings import read_run_config
from federated.strategy import STRATEGY_CLASSES
from hub import rounds_cli
from hub.schemas import StartRun
from hub.superlink import flower_app_dir
from models.errors import NexusError
from nexus_wire.runconfig import API_FIELDS, KEYS, STRATEGIES, RunConfig, flag_values


def _typed(config: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    return {k: (type(v), v) for k, v in config.items()}


def test_the_flower_app_declares_every_key_with_the_records_default() -> None:
    # Flower only accepts run-config keys its app declares, with these defaults
    declared = tomllib.loads((flower_app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert _typed(declared) == _typed(RunConfig().to_flower())


def test_every_strategy_name_has_a_flower_class() -> None:
    assert tuple(STRATEGY_CLASSES) == STRATEGIES


def test_flower_run_config_round_trips_and_its_toml_parses_back() -> None:
    config = RunConfig(model="emotion", rounds=7, select="region=1,2;tier=gold", base="/a path/base", lr=0.05)
    assert RunConfig.from_flower(config.to_flower()) == config
    # what `flwr run --run-config` makes of the string the hub passes it
    assert _typed(parse_config_args([config.to_toml()])) == _typed(config.to_flower())
    # the keys the hub keeps to itself never reach Flower
    assert "deadline_s" not in config.to_flower() and "deadline" not in config.to_flower()
    assert read_run_config({**config.to_flower(), "flower-own-key": 1}) == config


def test_bad_flower_values_are_one_line_errors_naming_the_key() -> None:
    with pytest.raises(NexusError, match=r"^run config num-rounds=0: "):
        read_run_config({"num-rounds": 0})
    with pytest.raises(NexusError, match="dp-clipping-norm"):
        read_run_config({"dp-clipping-norm": 0.0})
    with pytest.raises(NexusError, match="dp-noise-multiplier"):
        read_run_config({"dp-noise-multiplier": float("nan")})


def test_the_hub_body_takes_the_api_keys_only_and_requires_the_model() -> None:
    assert tuple(StartRun.model_fields) == API_FIELDS
    assert StartRun.model_fields["model"].is_required()
    body = StartRun.model_validate({"model": "funnel"}).model_dump()
    assert RunConfig(**body) == RunConfig()
    assert RunConfig().api_view() == {k: v for k, v in body.items() if k != "model"}


def test_the_hub_cli_flags_are_the_api_keys_with_the_records_defaults() -> None:
    parser = argparse.ArgumentParser()
    rounds_cli.register(parser.add_subparsers(), lambda p: None)
    args = parser.parse_args(["rounds", "start", "--model", "emotion", "--select", "region=1", "--select", "tier=a"])
    assert flag_values(args, API_FIELDS) == {**RunConfig().api_view(), "model": "emotion", "select": "region=1;tier=a"}
    args = parser.parse_args(["rounds", "start", "--model", "funnel", "--timeout", "5", "--deadline", "60"])
    assert flag_values(args, API_FIELDS)["timeout_s"] == 5.0 and flag_values(args, API_FIELDS)["deadline_s"] == 60.0


def test_every_field_names_where_it_goes() -> None:
    assert set(KEYS) == set(RunConfig.model_fields)
    flower = [k.flower for k in KEYS.values() if k.flower is not None]
    assert len(flower) == len(set(flower))
