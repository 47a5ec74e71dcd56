"""Secure aggregation (Flower's SecAgg+) over the in-process LocalGrid: the real ClientApp (store
loader, audit mod, SecAgg+ mod) and the real ServerApp rounds, each node with its own data dir.
The real-process run, with a SuperNode killed mid-round, is in test_flower_app.py."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from edge_worker.audit import SEND, AuditLog, AuditReader, PrivacyBudget, verify
from edge_worker.audit.report import build_report, render_html
from federated import codec
from federated.client_app import app, make_client_app
from federated.local_grid import LocalGrid
from federated.receipts import ReceiptBook
from federated.round_outcome import RunFailed
from federated.secure_aggregation import secure_aggregation_mod, stage_of
from federated.secure_grid import quantization_range
from federated.server_app import RunResult, run_rounds
from federated.strategy import RoundRecord
from hub.schemas import StartRun
from models.errors import NexusError
from models.families import FAMILIES
from models.task import ModelSpec
from nexus_service.http import describe
from nexus_wire.runconfig import RunConfig
from tests.support.federated import funnel_spec, node_with_outcomes

#: SecAgg+ quantizes each weight of (examples / 10,000) * delta to 2**24 levels over [-8, 8]: the
#: average carries ~2e-5 of error per weight for three nodes of ~160 training examples
TOLERANCE = 5e-4


class DeadAfter(LocalGrid):
    """A LocalGrid on which one node goes away once it has answered a given SecAgg+ stage:
    nothing sent to it afterwards is answered, as with a SuperNode that was killed."""

    def __init__(self, *args, node: int, stage: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.node, self.stage, self.dead = node, stage, False

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        live = [m for m in messages if not (self.dead and m.metadata.dst_node_id == self.node)]
        last = any(stage_of(m) == self.stage and m.metadata.dst_node_id == self.node for m in live)
        replies = list(super().send_and_receive(live, timeout=timeout))
        self.dead = self.dead or last
        return replies


def _nodes(tmp_path: Path, count: int) -> tuple[list[Path], ModelSpec]:
    made = [node_with_outcomes(tmp_path / f"edge{i}", i) for i in range(1, count + 1)]
    return [d for d, _ in made], funnel_spec([s for _, rows in made for s in rows])


def _grid(dirs: list[Path], settings: RunConfig, grid: type[LocalGrid] = LocalGrid, **kwargs) -> LocalGrid:
    made = grid(app, {i + 1: {"data-dir": str(d)} for i, d in enumerate(dirs)}, **kwargs)
    for context in made.contexts.values():
        context.run_config.update(settings.to_flower())  # what the SuperNode hands the ClientApp
    return made


def _run(grid: LocalGrid, settings: RunConfig, spec: ModelSpec, **kwargs) -> RunResult:
    return run_rounds(grid, settings, spec, FAMILIES.get(spec.family).task.init_weights(spec, 0), **kwargs)


def _max_diff(a: codec.Weights, b: codec.Weights) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def test_a_secure_round_gives_the_plain_average_and_only_masked_updates_leave(tmp_path: Path) -> None:
    dirs, spec = _nodes(tmp_path / "secure", 3)
    plain = RunConfig(rounds=2, min_nodes=3, seed=3)
    expected = _run(_grid(_nodes(tmp_path / "plain", 3)[0], plain), plain, spec)  # the same data, logs apart
    secure = plain.model_copy(update={"secure_aggregation": True, "output_path": str(tmp_path / "out" / "final.npz")})
    key = Ed25519PrivateKey.generate()
    for node in dirs:
        with AuditLog(node) as audit:
            audit.pin_hub_key(key.public_key(), "http://hub.invalid")  # as enrollment does
    book = ReceiptBook(key)
    result = _run(_grid(dirs, secure), secure, spec, receipts=book)

    assert _max_diff(result.weights, expected.weights) < TOLERANCE
    assert [(r.participants, r.train_failures) for r in result.rounds] == [(3, 0), (3, 0)]
    for got, want in zip(result.rounds, expected.rounds):  # the average loss travels masked too
        assert got.train_loss == pytest.approx(want.train_loss, abs=1e-3)
    summary = json.loads((tmp_path / "out" / "final.json").read_text())
    for r in summary["rounds"]:
        protocol = r["secure_aggregation"]
        assert protocol["summed"] == protocol["sampled"] == ["1", "2", "3"] and protocol["dropped"] == []
        assert set(protocol["stage_s"]) == {"setup", "share_keys", "collect_masked_vectors", "unmask"}
        assert len(r["update_bytes"]) == 3 and r["bytes_in"] > sum(r["update_bytes"])

    weights = sum(w.size for w in result.weights.values())
    for node in dirs:
        entries = [e for e in AuditReader(node).entries(SEND) if e.summary.get("message_type") == "train"]
        # four stages per round, and never an update the hub could read on its own
        kinds = [e.kind for e in entries]
        assert kinds == ["secagg-public-keys", "secagg-key-shares", "masked-update", "secagg-unmask-shares"] * 2
        masked = [e for e in entries if e.kind == "masked-update"]
        for entry in masked:
            assert entry.summary["arrays"] == {}  # the masked vector: 64-bit integers mod 2**32, as bytes
            vector = entry.summary["records"][RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
            assert len(vector) == 1 + 4 + 1 and entry.bytes > 8 * weights
            assert entry.summary["records"]["fitres.num_examples"] == {"num_examples": 0}  # the weight is masked
        setup = entries[0].summary["secure_aggregation"]
        assert (setup["stage"], setup["sample_num"], setup["threshold"]) == ("setup", 3, 2)
        assert setup["target_range"] == quantization_range(3)
        check = verify(node)  # every stage's reply carries the hub's receipt, bound to its entry
        assert check.ok and check.receipts == len(list(AuditReader(node).entries(SEND))) - 1  # not the ack
        report = build_report(node)
        [run] = report["secure_aggregation"]["runs"]
        assert report["secure_aggregation"]["used"] and report["secure_aggregation"]["unmasked_runs"] == []
        assert (run["masked_updates"], run["nodes"], run["threshold"]) == (2, 3, 2)
        assert "8. Secure aggregation" in render_html(report) and "masked (SecAgg+)" in render_html(report)


def test_a_node_that_drops_after_sharing_keys_has_its_masks_reconstructed(tmp_path: Path) -> None:
    dirs, spec = _nodes(tmp_path / "secure", 4)
    secure = RunConfig(rounds=1, min_nodes=3, seed=5, secure_aggregation=True, output_path=str(tmp_path / "f.npz"))
    grid = _grid(dirs, secure, DeadAfter, node=4, stage=Stage.SHARE_KEYS)
    result = _run(grid, secure, spec)
    # the three others added pairwise masks with node 4: the hub removed them from its key shares
    plain = RunConfig(rounds=1, min_nodes=3, seed=5)
    expected = _run(_grid(_nodes(tmp_path / "plain", 3)[0], plain), plain, spec)
    assert _max_diff(result.weights, expected.weights) < TOLERANCE
    [r] = result.rounds
    assert (r.participants, r.nodes, r.train_failures, r.eval_nodes) == (3, [1, 2, 3], 1, 3)
    [protocol] = [x["secure_aggregation"] for x in json.loads((tmp_path / "f.json").read_text())["rounds"]]
    assert protocol["summed"] == ["1", "2", "3"] and protocol["threshold_share"] == pytest.approx(2 / 3)
    [dropped] = protocol["dropped"]
    assert (dropped["node"], dropped["stage"]) == ("4", "collect_masked_vectors")
    assert dropped["reason"].startswith("no reply")
    kinds = [e.kind for e in AuditReader(dirs[3]).entries(SEND)]
    assert kinds == ["node-tags", "secagg-public-keys", "secagg-key-shares"]  # its update never left


def test_dp_noise_goes_on_before_the_mask_and_is_charged_once_per_round(tmp_path: Path) -> None:
    dirs, spec = _nodes(tmp_path / "secure", 3)
    # a clipping norm far below the updates' and little noise: the clipped average shows through
    plain = RunConfig(rounds=1, min_nodes=3, seed=7, dp_noise_multiplier=1e-3, dp_clipping_norm=0.01)
    expected = _run(_grid(_nodes(tmp_path / "plain", 3)[0], plain), plain, spec)
    raw = RunConfig(rounds=1, min_nodes=3, seed=7)
    unclipped = _run(_grid(_nodes(tmp_path / "raw", 3)[0], raw), raw, spec)
    secure = plain.model_copy(update={"secure_aggregation": True})
    result = _run(_grid(dirs, secure), secure, spec)

    assert _max_diff(result.weights, expected.weights) < TOLERANCE < _max_diff(unclipped.weights, expected.weights)
    assert result.rounds[0].participants == 3 and result.rounds[0].train_loss is None  # the loss is not private
    for node in dirs:
        masked = [e for e in AuditReader(node).entries(SEND) if e.kind == "masked-update"]
        assert len(masked) == 1 and masked[0].summary["dp"]["noise_multiplier"] == 1e-3
        assert len(masked[0].summary["records"][RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]) == 1 + 4  # no loss
        assert PrivacyBudget(node).summary()["rounds"] == 1  # the setup stage checked, the masked update paid


def test_sparse_emotion_updates_travel_dense_and_the_cost_is_eight_bytes_a_weight(tmp_path: Path) -> None:
    from models.emotion.featurizer import DEFAULT_SPEC

    spec = ModelSpec(
        "emotion",
        {**DEFAULT_SPEC, "buckets": 1 << 12},
        ("joy", "anger", "neutral"),
        {"buckets": 1 << 12, "dim": 8, "n_labels": 3},
    )
    rng = np.random.default_rng(0)
    words = ["great", "awful", "fine", "love", "hate", "ok", "angry", "happy", "meh", "wow"]
    texts = [" ".join(rng.choice(words, 5)) for _ in range(180)]
    labels = np.zeros((180, 3), bool)
    labels[np.arange(180), [0 if "love" in t else 1 if "hate" in t else 2 for t in texts]] = True
    task = FAMILIES.get("emotion").task
    shares = {p: task.featurize(spec, texts[i::3], labels[i::3]) for i, p in enumerate("abc")}
    initial = task.init_weights(spec, 0)

    def run(settings: RunConfig) -> RunResult:
        client = make_client_app(lambda node_config, _: shares[node_config["partition"]], mods=[secure_aggregation_mod])
        grid = LocalGrid(client, {i + 1: {"partition": p} for i, p in enumerate("abc")})
        for context in grid.contexts.values():
            context.run_config.update(settings.to_flower())
        return run_rounds(grid, settings, spec, initial)

    base = RunConfig(model="emotion", rounds=1, min_nodes=3, local_epochs=2)
    sparse = run(base)  # int8 deltas of the touched embedding rows
    dense = run(base.model_copy(update={"compression": "none"}))
    secure = run(base.model_copy(update={"secure_aggregation": True}))
    assert _max_diff(secure.weights, dense.weights) < TOLERANCE
    weights = sum(w.size for w in initial.values())
    assert min(secure.rounds[0].update_bytes) > 8 * weights > 20 * max(sparse.rounds[0].update_bytes)


def test_a_node_sends_no_unmasked_update_in_a_secure_run_and_no_masked_one_otherwise(tmp_path: Path) -> None:
    dirs, spec = _nodes(tmp_path / "a", 3)
    nodes_think = RunConfig(min_nodes=3, secure_aggregation=True)
    with pytest.raises(RunFailed, match=r"round 1: 0 of 3 node\(s\) trained, fewer than min-nodes 3 \(3 error\)"):
        _run(_grid(dirs, nodes_think), RunConfig(rounds=1, min_nodes=3), spec)  # a hub that sends plain rounds
    errors = [e for e in AuditReader(dirs[0]).entries(SEND) if e.kind == "error"]
    assert "this run uses secure aggregation: the node sends no unmasked update" in errors[0].summary["reason"]
    assert not [e for e in AuditReader(dirs[0]).entries(SEND) if e.kind == "model-update"]

    others = _nodes(tmp_path / "other", 3)[0]  # and nodes of a plain run, asked for SecAgg+ stages
    rounds: list[RoundRecord] = []
    with pytest.raises(RunFailed, match="0 of 3"):
        secure = RunConfig(rounds=1, min_nodes=3, secure_aggregation=True)
        _run(_grid(others, RunConfig()), secure, spec, on_round=rounds.append)
    assert rounds[0].failed and rounds[0].train_failures == 3


def test_a_malformed_masked_vector_drops_that_node_and_the_round_goes_on(tmp_path: Path) -> None:
    dirs, spec = _nodes(tmp_path / "a", 4)
    settings = RunConfig(rounds=1, min_nodes=3, secure_aggregation=True)  # all four asked, three enough
    grid = _grid(dirs, settings)

    def hostile(msg: Message, context: Context) -> Message:
        reply = app(msg, context)
        if context.node_id == 4 and not reply.has_error():
            record = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if record is not None and Key.MASKED_PARAMETERS in record:
                record[Key.MASKED_PARAMETERS] = record[Key.MASKED_PARAMETERS][:2]  # a short vector
        return reply

    grid.app = hostile  # type: ignore[assignment]
    result = _run(grid, settings, spec)
    [r] = result.rounds
    assert (r.participants, r.nodes, r.train_failures) == (3, [1, 2, 3], 1)
    assert all(np.all(np.isfinite(w)) for w in result.weights.values())


def test_secure_aggregation_refuses_what_needs_each_update_and_the_flag_sets_it() -> None:
    with pytest.raises(ValueError, match="krum needs each one"):
        RunConfig(secure_aggregation=True, strategy="krum", min_nodes=5)
    with pytest.raises(ValueError, match="min_nodes >= 3"):
        RunConfig(secure_aggregation=True, min_nodes=2)
    from federated.settings import read_run_config

    with pytest.raises(NexusError, match="^run config: secure aggregation needs min_nodes >= 3"):
        read_run_config({"secure-aggregation": True, "min-nodes": 2})
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        StartRun.model_validate({"model": "funnel", "secure_aggregation": True, "strategy": "fedtrimmedavg"})
    assert describe(refused.value) == (
        "body: secure aggregation shows the hub only the sum of the updates; fedtrimmedavg needs each one"
    )
    import argparse

    from hub import rounds_cli
    from nexus_wire.runconfig import API_FIELDS, flag_values

    parser = argparse.ArgumentParser()
    rounds_cli.register(parser.add_subparsers(), lambda p: None)
    args = parser.parse_args(["rounds", "start", "--model", "funnel", "--min-nodes", "3", "--secure-aggregation"])
    assert flag_values(args, API_FIELDS)["secure_aggregation"] is True
    assert RunConfig(**flag_values(args, API_FIELDS)).to_flower()["secure-aggregation"] is True
