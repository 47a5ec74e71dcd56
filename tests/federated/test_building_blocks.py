"""Federated building blocks: update codec, server-side validation, partitions, and guarded rounds
run through the in-process grid with the real ClientApp handlers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from federated import codec, partition, validation
from federated.client_app import make_client_app
from federated.local_grid import LocalGrid
from federated.server_app import run_rounds
from federated.settings import parse_select, read_run_config
from models.errors import NexusError
from models.families import FAMILIES
from models.task import ModelSpec
from nexus_wire.messages import ARRAYS, METRICS
from nexus_wire.runconfig import RunConfig
from tests.support.env import ROOT
from tests.support.federated import funnel_spec
from tests.support.sessions import synthetic_sessions


def emotion_spec(buckets: int = 1 << 12, dim: int = 8) -> ModelSpec:
    from models.emotion.featurizer import DEFAULT_SPEC

    return ModelSpec(
        "emotion",
        {**DEFAULT_SPEC, "buckets": buckets},
        ("joy", "anger", "neutral"),
        {"buckets": buckets, "dim": dim, "n_labels": 3},
    )


# --- codec -------------------------------------------------------------------------------


def _emotion_update(rows: np.ndarray, seed: int = 0) -> tuple[codec.Weights, codec.Weights]:
    rng = np.random.default_rng(seed)
    base = {
        "embedding": rng.normal(0, 0.1, (64, 8)).astype(np.float32),
        "dense_w": rng.normal(size=(8, 3)).astype(np.float32),
        "dense_b": np.zeros(3, np.float32),
    }
    new = {k: v.copy() for k, v in base.items()}
    new["embedding"][rows] += rng.normal(0, 0.05, (len(rows), 8)).astype(np.float32)
    new["dense_w"] += 0.01
    return base, new


@pytest.mark.parametrize("compression,tol", [("none", 0.0), ("fp16", 1e-3), ("int8", 0.05 / 127 * 4)])
def test_sparse_codec_round_trips_touched_rows(compression: str, tol: float) -> None:
    rows = np.array([1, 5, 9, 33])
    base, new = _emotion_update(rows)
    decoded = codec.decode(codec.encode(new, base, rows, compression), base)
    assert set(decoded) == set(base)
    np.testing.assert_allclose(decoded["embedding"], new["embedding"], atol=tol)
    np.testing.assert_array_equal(decoded["dense_w"], new["dense_w"])
    untouched = np.setdiff1d(np.arange(64), rows)
    np.testing.assert_array_equal(decoded["embedding"][untouched], base["embedding"][untouched])


def test_int8_update_is_much_smaller_than_dense() -> None:
    base = {
        "embedding": np.zeros((4096, 32), np.float32),
        "dense_w": np.zeros((32, 3), np.float32),
        "dense_b": np.zeros(3, np.float32),
    }
    rows = np.arange(0, 4096, 4)  # a quarter of the rows touched
    new = {k: v + 0.01 for k, v in base.items()}
    sparse = codec.encode(new, base, rows, "int8").count_bytes()
    assert sparse * 8 <= codec.dense_bytes(new)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda a: a.update({"embedding.rows": np.array([1, 1], np.int32)}), "out of range or repeated"),
        (lambda a: a.update({"embedding.rows": np.array([1, 999], np.int32)}), "out of range or repeated"),
        (lambda a: a.pop("embedding.delta_scale"), "without its delta"),
        (lambda a: a.update({"embedding.delta_q": np.zeros((2, 5), np.int8)}), "shape"),
    ],
)
def test_malformed_sparse_updates_are_refused(mutate: Any, message: str) -> None:
    rows = np.array([2, 3])
    base, new = _emotion_update(rows)
    arrays = codec.from_record(codec.encode(new, base, rows, "int8"))
    mutate(arrays)
    with pytest.raises(codec.UpdateError, match=message):
        codec.decode(codec.to_record(arrays), base)


# --- validation ----------------------------------------------------------------------------


def test_judge_rejects_wrong_shapes_non_finite_and_absurd_norms() -> None:
    base = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    good = [{"w": np.full((3, 2), 0.1 * i, np.float32), "b": np.zeros(2, np.float32)} for i in (1, 2, 3)]
    bad_shape = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}
    nan = {"w": np.full((3, 2), np.nan, np.float32), "b": np.zeros(2, np.float32)}
    huge = {"w": np.full((3, 2), 1e6, np.float32), "b": np.zeros(2, np.float32)}
    scaled = {
        "w": np.full((3, 2), 50.0, np.float32),
        "b": np.zeros(2, np.float32),
    }  # under the cap, far over the median
    verdicts = validation.judge([*good, bad_shape, nan, huge, scaled], base)
    reasons = [v.reason for v in verdicts]
    assert reasons[:3] == [None, None, None]
    assert "shape" in reasons[3] and "NaN" in reasons[4] and "cap" in reasons[5] and "median" in reasons[6]


# --- partitions and settings ---------------------------------------------------------------


def test_dirichlet_partition_covers_every_row_once_and_skews_labels() -> None:
    labels = np.random.default_rng(0).integers(0, 4, 2000)
    part = partition.dirichlet(labels, nodes=5, alpha=0.3, seed=1)
    rows = np.concatenate(part.rows)
    assert sorted(rows.tolist()) == list(range(2000))
    mixes = np.array([np.bincount(labels[r], minlength=4) / len(r) for r in part.rows])
    assert mixes.std(axis=0).max() > 0.1  # label mixes differ between nodes
    assert partition.dirichlet(labels, 5, 0.3, seed=1).rows[0].tolist() == part.rows[0].tolist()


def test_partition_and_selection_parsing_errors_are_one_line() -> None:
    assert partition.parse("dirichlet:0.5") == ("dirichlet", 0.5)
    assert parse_select("region=1,2; tier=gold") == {"region": {"1", "2"}, "tier": {"gold"}}
    for bad in ("dirichlet:x", "dirichlet:-1", "zipf"):
        with pytest.raises(NexusError):
            partition.parse(bad)
    with pytest.raises(NexusError, match="key=value"):
        read_run_config({"select": "region"})
    with pytest.raises(NexusError, match="strategy"):
        read_run_config({"strategy": "fedsgd"})


# --- guarded rounds over the in-process grid --------------------------------------------------


def _funnel_nodes(n_nodes: int) -> tuple[ModelSpec, dict[str, Any]]:
    shares = {f"r{i}": synthetic_sessions(300, seed=i, region=i) for i in range(1, n_nodes + 1)}
    spec = funnel_spec([s for sessions, _ in shares.values() for s in sessions])
    task = FAMILIES.get("funnel").task
    return spec, {name: task.featurize(spec, sessions, labels) for name, (sessions, labels) in shares.items()}


def _poisoning(app: ClientApp, poison: str) -> ClientApp:
    """Wraps the real ClientApp: the node named "bad" corrupts its honest update."""
    bad = ClientApp()

    @bad.train()
    def train(msg: Message, context: Context) -> Message:
        reply = app(msg, context)
        if context.node_config["partition"] != "bad":
            return reply
        arrays = codec.from_record(reply.content[ARRAYS])
        if poison == "nan":
            arrays["w0"][0, 0] = np.nan
        elif poison == "shape":
            arrays["w0"] = arrays["w0"][:, :-1]
        else:
            arrays = {k: v * 1e6 for k, v in arrays.items()}
        return Message(RecordDict({ARRAYS: codec.to_record(arrays), METRICS: reply.content[METRICS]}), reply_to=msg)

    @bad.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return app(msg, context)

    return bad


@pytest.mark.parametrize("poison", ["nan", "shape", "norm"])
def test_round_rejects_a_bad_update_and_goes_on(poison: str, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    spec, shares = _funnel_nodes(3)
    shares["bad"] = shares["r1"]
    app = _poisoning(make_client_app(lambda node_config, _: shares[node_config["partition"]]), poison)
    grid = LocalGrid(app, {i + 1: {"partition": name} for i, name in enumerate(shares)})
    initial = FAMILIES.get("funnel").task.init_weights(spec, 0)
    # all four are asked (fraction 1); three trainers are enough to go on
    settings = RunConfig(rounds=2, min_nodes=3, output_path=str(tmp_path / "final.npz"))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = run_rounds(grid, settings, spec, initial)
    assert [r.participants for r in result.rounds] == [3, 3]
    assert all(len(r.rejected) == 1 and r.rejected[0]["node"] == 4 for r in result.rounds)
    assert "rejected the update of node 4" in caplog.text
    assert all(np.all(np.isfinite(v)) for v in result.weights.values())
    summary = json.loads((tmp_path / "final.json").read_text())
    assert summary["status"] == "finished" and len(summary["rounds"]) == 2
    assert summary["participants"] == ["1", "2", "3"]  # the nodes named no hub id: by Flower id
    assert all(r["rejected"][0]["node"] == "4" for r in summary["rounds"])
    with np.load(tmp_path / "final.npz") as saved:
        assert set(saved.files) == set(initial)


@pytest.mark.parametrize("strategy", ["fedavgm", "fedavg", "fedprox", "fedadam", "fedtrimmedavg", "krum"])
def test_every_strategy_lowers_the_held_out_loss(strategy: str) -> None:
    spec, shares = _funnel_nodes(4)
    grid = LocalGrid(
        make_client_app(lambda node_config, _: shares[node_config["partition"]]),
        {i + 1: {"partition": n} for i, n in enumerate(shares)},
    )
    settings = RunConfig(rounds=3, local_epochs=2, strategy=strategy, min_nodes=4, lr=0.01)
    result = run_rounds(grid, settings, spec, FAMILIES.get("funnel").task.init_weights(spec, 0))
    losses = [r.loss for r in result.rounds]
    assert all(r.participants == 4 for r in result.rounds)
    assert losses[-1] < losses[0] and 0.0 <= result.rounds[-1].score <= 1.0
    assert result.rounds[0].bytes_in > 0 and result.rounds[0].bytes_out > result.rounds[0].bytes_in


def test_selection_by_tag_trains_only_the_matching_nodes() -> None:
    spec, shares = _funnel_nodes(3)
    configs = {i + 1: {"partition": n, "region": str(i + 1)} for i, n in enumerate(shares)}
    grid = LocalGrid(make_client_app(lambda node_config, _: shares[node_config["partition"]]), configs)
    settings = RunConfig(rounds=1, min_nodes=2, select="region=1,3")
    result = run_rounds(grid, settings, spec, FAMILIES.get("funnel").task.init_weights(spec, 0))
    assert result.rounds[0].nodes == [1, 3]


def test_participants_are_named_by_the_id_the_hub_assigned(tmp_path: Path) -> None:
    """The selection query's replies carry each node's ``nexus-node``; a node without a valid
    one (an older edge, or one whose config holds something else) is named by its Flower id."""
    spec, shares = _funnel_nodes(3)
    names = {1: "n-00000000000000a1", 2: "n-not-hex-at-all", 3: None}
    configs = {
        i + 1: {"partition": n, **({"nexus-node": names[i + 1]} if names[i + 1] else {})} for i, n in enumerate(shares)
    }
    grid = LocalGrid(make_client_app(lambda node_config, _: shares[node_config["partition"]]), configs)
    settings = RunConfig(rounds=1, min_nodes=3, output_path=str(tmp_path / "final.npz"))
    run_rounds(grid, settings, spec, FAMILIES.get("funnel").task.init_weights(spec, 0))
    summary = json.loads((tmp_path / "final.json").read_text())
    assert summary["participants"] == ["2", "3", "n-00000000000000a1"]
    assert summary["rounds"][0]["nodes"] == summary["participants"]


def test_emotion_round_ships_touched_rows_only() -> None:
    spec = emotion_spec()
    rng = np.random.default_rng(0)
    words = ["great", "awful", "fine", "love", "hate", "ok", "angry", "happy", "meh", "wow"]
    texts = [" ".join(rng.choice(words, 5)) for _ in range(120)]
    labels = np.zeros((120, 3), bool)
    labels[
        np.arange(120),
        [0 if ("love" in t or "happy" in t) else 1 if ("hate" in t or "angry" in t) else 2 for t in texts],
    ] = True
    task = FAMILIES.get("emotion").task
    shares = {"a": task.featurize(spec, texts[:60], labels[:60]), "b": task.featurize(spec, texts[60:], labels[60:])}
    grid = LocalGrid(
        make_client_app(lambda node_config, _: shares[node_config["partition"]]),
        {1: {"partition": "a"}, 2: {"partition": "b"}},
    )
    initial = task.init_weights(spec, 0)
    result = run_rounds(grid, RunConfig(model="emotion", rounds=2, local_epochs=2), spec, initial)
    assert all(r.participants == 2 and r.rejected == [] for r in result.rounds)
    assert max(b for r in result.rounds for b in r.update_bytes) * 4 <= codec.dense_bytes(initial)
    assert result.rounds[-1].score is not None


def test_a_run_can_start_from_the_committed_funnel_bundle() -> None:
    from federated.server_app import load_base

    bundles = sorted((ROOT / "models" / "bundles" / "funnel").iterdir(), key=lambda p: int(p.name))
    spec, weights = load_base(RunConfig(model="funnel", base=str(bundles[-1])))
    assert spec.family == "funnel" and weights["w0"].shape == (spec.featurizer["n_features"], spec.shape["hidden"])
    with pytest.raises(NexusError, match="emotion"):
        load_base(RunConfig(model="emotion", base=str(bundles[-1])))
