"""Is federation worth it? Central vs federated vs local-only training on one partitioned data set.

The federated arm runs the real ServerApp rounds (:func:`federated.server_app.run_rounds`)
and the real ClientApp handlers over a :class:`~federated.local_grid.LocalGrid`. Each node
keeps the ClientApp's held-out share of its partition out of training; the central and
local-only arms train on exactly the rows the nodes train on, so the three are compared
on equal data. All three are scored on the eval file: pooled over its rows, and (when
the partition is a key the eval rows carry, such as region) the mean over partitions.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.supercore.logger import FLOWER_LOGGER

from federated import codec
from federated import partition as partitioning
from federated.client_app import make_client_app
from federated.local_grid import LocalGrid
from federated.server_app import run_rounds
from federated.settings import RunSettings
from federated.strategy import RoundRecord
from federated.tasks import Examples, ModelSpec, Task, task_for
from models.emotion import data as emotion_data
from models.emotion.featurizer import DEFAULT_SPEC as EMOTION_FEATURIZER
from models.errors import NexusError
from models.funnel import data as funnel_data
from models.funnel import train as funnel_train
from models.funnel.featurizer import fit_spec
from models.progress import Progress

#: embedding width of simulated emotion models
EMOTION_DIM = 32
#: epochs of the central and local-only arms (the family's central default)
CENTRAL_EPOCHS = {"funnel": funnel_train.EPOCHS, "emotion": 5}


@dataclass(frozen=True)
class SimConfig:
    model: str
    data: Path
    eval: Path | None = None
    partition: str = "region"
    nodes: int = 10
    rounds: int = 10
    local_epochs: int = 2
    strategy: str = "fedavg"
    compression: str = "int8"
    seed: int = 0
    compare_dense: bool = False  # emotion: also run federated with dense fp32 updates


@dataclass(frozen=True)
class Dataset:
    spec: ModelSpec
    train: Examples
    train_keys: np.ndarray | None  # partition key per training row (region), if any
    eval: Examples
    eval_keys: np.ndarray | None


def _load_funnel(cfg: SimConfig) -> Dataset:
    data = funnel_data.read_sessions(cfg.data)
    if cfg.eval is None or funnel_data.resolve(cfg.eval).resolve() == data.path.resolve():
        # one file: score on the project's fixed held-out split of it
        train_idx, test_idx = funnel_data.split_indices(data.labels)
        train = [data.sessions[i] for i in train_idx]
        held = [data.sessions[i] for i in test_idx]
        y_train, y_eval = data.labels[train_idx], data.labels[test_idx]
    else:
        other = funnel_data.read_sessions(cfg.eval)
        train, held, y_train, y_eval = data.sessions, other.sessions, data.labels, other.labels
    # the featurizer statistics play the part of the base model every node starts from
    spec = ModelSpec("funnel", fit_spec(train), ("purchase",), {"hidden": funnel_train.HIDDEN})
    task = task_for("funnel")
    keys = lambda sessions: np.asarray([str(s["Region"]) for s in sessions])  # noqa: E731
    return Dataset(
        spec, task.featurize(spec, train, y_train), keys(train), task.featurize(spec, held, y_eval), keys(held)
    )


def _load_emotion(cfg: SimConfig) -> Dataset:
    labels = emotion_data.read_labels(Path(cfg.data).parent / "labels.txt")
    eval_path = cfg.eval if cfg.eval is not None else Path(cfg.data).parent / "dev.tsv"
    train = emotion_data.read_tsv(cfg.data, len(labels))
    held = emotion_data.read_tsv(eval_path, len(labels))
    shape = {"buckets": int(EMOTION_FEATURIZER["buckets"]), "dim": EMOTION_DIM, "n_labels": len(labels)}
    spec = ModelSpec("emotion", dict(EMOTION_FEATURIZER), tuple(labels), shape)
    task = task_for("emotion")
    return Dataset(
        spec, task.featurize(spec, train.texts, train.labels), None, task.featurize(spec, held.texts, held.labels), None
    )


def _partition(cfg: SimConfig, ds: Dataset) -> partitioning.Partition:
    kind, alpha = partitioning.parse(cfg.partition)
    if kind == "region":
        if ds.train_keys is None:
            raise NexusError(f"--partition region needs the funnel data (the {cfg.model} data has no region)")
        return partitioning.by_key(ds.train_keys, "region")
    if kind == "iid":
        return partitioning.iid(len(ds.train), cfg.nodes, cfg.seed)
    return partitioning.dirichlet(ds.train.labels, cfg.nodes, alpha, cfg.seed)


def _score(task: Task, scores: np.ndarray, labels: np.ndarray, seed: int) -> float:
    return float(task.metrics(scores, labels, seed)[task.score_name])


def _arm_scores(
    task: Task, ds: Dataset, names: list[str], models: Mapping[str, codec.Weights], seed: int
) -> dict[str, Any]:
    """Pooled and per-partition scores; ``models`` maps partition name -> weights ("*" = one for all)."""
    routed = ds.eval_keys is not None and "*" not in models
    if "*" in models:
        pooled_scores = task.scores(models["*"], ds.eval)
        out: dict[str, Any] = {"pooled": _score(task, pooled_scores, ds.eval.labels, seed)}
    elif routed:
        pooled_scores = np.zeros(ds.eval.labels.shape, dtype=np.float64)
        for name in names:
            rows = np.flatnonzero(ds.eval_keys == name.split("=", 1)[1])
            pooled_scores[rows] = task.scores(models[name], ds.eval.take(rows))
        out = {"pooled": _score(task, pooled_scores, ds.eval.labels, seed)}
    else:
        # no key routes eval rows to a node: each local model is scored on all of them
        per_model = [_score(task, task.scores(models[n], ds.eval), ds.eval.labels, seed) for n in names]
        return {"pooled": float(np.mean(per_model)), "partition_mean": None, "per_node": dict(zip(names, per_model))}
    if ds.eval_keys is None:
        out["partition_mean"] = None
        return out
    per_part = {}
    for name in names:
        rows = np.flatnonzero(ds.eval_keys == name.split("=", 1)[1])
        if len(rows):
            per_part[name] = _score(task, pooled_scores[rows], ds.eval.labels[rows], seed)
    out["partition_mean"] = float(np.nanmean(list(per_part.values())))
    out["per_partition"] = per_part
    return out


@contextlib.contextmanager
def _quiet_flower() -> Any:
    """Flower logs every step at INFO on stdout, where ``--json`` output goes: keep warnings, on stderr."""
    saved = FLOWER_LOGGER.level, [(h, getattr(h, "stream", None)) for h in FLOWER_LOGGER.handlers]
    FLOWER_LOGGER.setLevel(logging.WARNING)
    for handler, _ in saved[1]:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    try:
        yield
    finally:
        FLOWER_LOGGER.setLevel(saved[0])
        for handler, stream in saved[1]:
            if stream is not None:
                handler.setStream(stream)


def _federated(
    cfg: SimConfig, ds: Dataset, part: partitioning.Partition, initial: codec.Weights, compression: str
) -> tuple[codec.Weights, list[RoundRecord]]:
    shares = {name: ds.train.take(rows) for name, rows in zip(part.names, part.rows)}
    node_configs = {i + 1: {"partition": name} for i, name in enumerate(part.names)}
    loader = lambda node_config, spec: shares[node_config["partition"]]  # noqa: E731 - data already featurised
    settings = RunSettings(
        model=cfg.model,
        num_rounds=cfg.rounds,
        local_epochs=cfg.local_epochs,
        strategy=cfg.strategy,
        min_nodes=len(part.names),
        compression=compression,
        seed=cfg.seed,
    )
    progress = Progress(f"federated {cfg.model} ({compression})", cfg.rounds)
    with _quiet_flower():
        result = run_rounds(
            LocalGrid(make_client_app(loader), node_configs),
            settings,
            ds.spec,
            initial,
            on_round=lambda r: progress.update(1, score=r.score or float("nan")),
        )
    progress.close()
    return result.weights, result.rounds


def simulate(cfg: SimConfig) -> dict[str, Any]:
    started = time.monotonic()
    task = task_for(cfg.model)
    ds = _load_funnel(cfg) if cfg.model == "funnel" else _load_emotion(cfg)
    part = _partition(cfg, ds)
    # every arm trains on the rows the ClientApp trains on: each node's non-held-out share
    train_rows = {
        name: rows[task.split(ds.train.labels[rows], cfg.seed)[0]] for name, rows in zip(part.names, part.rows)
    }
    initial = task.init_weights(ds.spec, cfg.seed)
    epochs, lr = CENTRAL_EPOCHS[cfg.model], task.default_lr

    central = task.train(
        initial, ds.train.take(np.sort(np.concatenate(list(train_rows.values())))), epochs, cfg.seed, lr, 0.0
    ).weights
    local = {
        name: task.train(initial, ds.train.take(rows), epochs, cfg.seed, lr, 0.0).weights
        for name, rows in train_rows.items()
    }
    federated, rounds = _federated(cfg, ds, part, initial, cfg.compression)

    update_bytes = [b for r in rounds for b in r.update_bytes]
    dense = codec.dense_bytes(initial)
    report: dict[str, Any] = {
        "model": cfg.model,
        "metric": task.score_name,
        "partition": cfg.partition,
        "strategy": cfg.strategy,
        "rounds": cfg.rounds,
        "local_epochs": cfg.local_epochs,
        "central_epochs": epochs,
        "nodes": [
            {"name": n, "train_rows": int(len(train_rows[n])), "rows": int(len(r))}
            for n, r in zip(part.names, part.rows)
        ],
        "eval_rows": len(ds.eval),
        "central": _arm_scores(task, ds, part.names, {"*": central}, cfg.seed),
        "federated": _arm_scores(task, ds, part.names, {"*": federated}, cfg.seed),
        "local_only": _arm_scores(task, ds, part.names, local, cfg.seed),
        "per_round": [
            {
                "round": r.round,
                "participants": r.participants,
                "loss": r.loss,
                task.score_name: r.score,
                "bytes_in": r.bytes_in,
                "bytes_out": r.bytes_out,
            }
            for r in rounds
        ],
        "bytes_per_update": {
            "compression": cfg.compression,
            "mean": float(np.mean(update_bytes)) if update_bytes else None,
            "dense_fp32": dense,
            "ratio": dense / float(np.mean(update_bytes)) if update_bytes else None,
        },
    }
    if cfg.compare_dense and cfg.compression != "none":
        dense_weights, _ = _federated(cfg, ds, part, initial, "none")
        dense_score = _arm_scores(task, ds, part.names, {"*": dense_weights}, cfg.seed)["pooled"]
        report["bytes_per_update"]["dense_updates_score"] = dense_score
        report["bytes_per_update"]["accuracy_cost"] = dense_score - report["federated"]["pooled"]
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
