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
from federated.strategy import RoundRecord
from models.errors import NexusError
from models.families import FAMILIES, Families
from models.family import Family
from models.progress import Progress
from models.task import Examples, ModelSpec, Task
from nexus_wire.runconfig import Compression, Model, RunConfig, Strategy


@dataclass(frozen=True)
class SimConfig:
    model: Model
    data: Path
    eval: Path | None = None
    partition: str = "region"
    nodes: int = 10
    rounds: int = 10
    #: 0: the family's default (its task's ``federated_local_epochs``), as in a hub run
    local_epochs: int = 0
    strategy: Strategy = "fedavgm"
    server_momentum: float = 0.5
    compression: Compression = "int8"
    seed: int = 0
    compare_dense: bool = False  # emotion: also run federated with dense fp32 updates


@dataclass(frozen=True)
class Dataset:
    spec: ModelSpec
    train: Examples
    train_keys: np.ndarray | None  # partition key per training row (region), if any
    eval: Examples
    eval_keys: np.ndarray | None


def _load(task: Task, cfg: SimConfig) -> Dataset:
    sim = task.simulation_data(cfg.data, cfg.eval)
    train = task.featurize(sim.spec, sim.train, sim.train_labels)
    return Dataset(sim.spec, train, sim.train_keys, task.featurize(sim.spec, sim.eval, sim.eval_labels), sim.eval_keys)


def _partition(cfg: SimConfig, ds: Dataset) -> partitioning.Partition:
    kind, alpha = partitioning.parse(cfg.partition)
    if kind == "region":
        if ds.train_keys is None:
            raise NexusError(f"--partition region needs the funnel data (the {cfg.model} data has no region)")
        return partitioning.by_key(ds.train_keys, "region")
    if kind == "iid":
        return partitioning.iid(len(ds.train), cfg.nodes, cfg.seed)
    return partitioning.dirichlet(ds.train.labels, cfg.nodes, alpha, cfg.seed)


def _score(family: Family, scores: np.ndarray, labels: np.ndarray, seed: int) -> float:
    return float(family.task.metrics(scores, labels, seed)[family.score_name])


def _arm_scores(
    family: Family, ds: Dataset, names: list[str], models: Mapping[str, codec.Weights], seed: int
) -> dict[str, Any]:
    """Pooled and per-partition scores; ``models`` maps partition name -> weights ("*" = one for all)."""
    routed = ds.eval_keys is not None and "*" not in models
    if "*" in models:
        pooled_scores = family.task.scores(models["*"], ds.eval)
        out: dict[str, Any] = {"pooled": _score(family, pooled_scores, ds.eval.labels, seed)}
    elif routed:
        pooled_scores = np.zeros(ds.eval.labels.shape, dtype=np.float64)
        for name in names:
            rows = np.flatnonzero(ds.eval_keys == name.split("=", 1)[1])
            pooled_scores[rows] = family.task.scores(models[name], ds.eval.take(rows))
        out = {"pooled": _score(family, pooled_scores, ds.eval.labels, seed)}
    else:
        # no key routes eval rows to a node: each local model is scored on all of them
        per_model = [_score(family, family.task.scores(models[n], ds.eval), ds.eval.labels, seed) for n in names]
        return {"pooled": float(np.mean(per_model)), "partition_mean": None, "per_node": dict(zip(names, per_model))}
    if ds.eval_keys is None:
        out["partition_mean"] = None
        return out
    per_part = {}
    for name in names:
        rows = np.flatnonzero(ds.eval_keys == name.split("=", 1)[1])
        if len(rows):
            per_part[name] = _score(family, pooled_scores[rows], ds.eval.labels[rows], seed)
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
            if stream is not None and isinstance(handler, logging.StreamHandler):
                handler.setStream(stream)


def _federated(
    cfg: SimConfig,
    ds: Dataset,
    part: partitioning.Partition,
    initial: codec.Weights,
    compression: Compression,
    families: Families,
) -> tuple[codec.Weights, list[RoundRecord]]:
    shares = {name: ds.train.take(rows) for name, rows in zip(part.names, part.rows)}
    node_configs = {i + 1: {"partition": name} for i, name in enumerate(part.names)}
    loader = lambda node_config, spec: shares[node_config["partition"]]  # noqa: E731 - data already featurised
    settings = RunConfig(
        model=cfg.model,
        rounds=cfg.rounds,
        local_epochs=cfg.local_epochs,
        strategy=cfg.strategy,
        server_momentum=cfg.server_momentum,
        min_nodes=len(part.names),
        compression=compression,
        seed=cfg.seed,
    )
    progress = Progress(f"federated {cfg.model} ({compression})", cfg.rounds)
    with _quiet_flower():
        result = run_rounds(
            LocalGrid(make_client_app(loader, families=families), node_configs),
            settings,
            ds.spec,
            initial,
            on_round=lambda r: progress.update(1, score=r.score or float("nan")),
            families=families,
        )
    progress.close()
    return result.weights, result.rounds


def simulate(cfg: SimConfig, families: Families = FAMILIES) -> dict[str, Any]:
    started = time.monotonic()
    family = families.get(cfg.model)
    task = family.task
    ds = _load(task, cfg)
    part = _partition(cfg, ds)
    # every arm trains on the rows the ClientApp trains on: each node's non-held-out share
    train_rows = {
        name: rows[task.split(ds.train.labels[rows], cfg.seed)[0]] for name, rows in zip(part.names, part.rows)
    }
    initial = task.init_weights(ds.spec, cfg.seed)
    epochs, lr = task.central_epochs, task.default_lr

    central = task.train(
        initial, ds.train.take(np.sort(np.concatenate(list(train_rows.values())))), epochs, cfg.seed, lr, 0.0
    ).weights
    local = {
        name: task.train(initial, ds.train.take(rows), epochs, cfg.seed, lr, 0.0).weights
        for name, rows in train_rows.items()
    }
    federated, rounds = _federated(cfg, ds, part, initial, cfg.compression, families)

    update_bytes = [b for r in rounds for b in r.update_bytes]
    dense = codec.dense_bytes(initial)
    report: dict[str, Any] = {
        "model": cfg.model,
        "metric": family.score_name,
        "partition": cfg.partition,
        "strategy": cfg.strategy,
        "rounds": cfg.rounds,
        "local_epochs": cfg.local_epochs or task.federated_local_epochs,
        "server_momentum": cfg.server_momentum if cfg.strategy == "fedavgm" else None,
        "central_lr": lr,
        "lr": task.federated_lr,
        "central_epochs": epochs,
        "nodes": [
            {"name": n, "train_rows": int(len(train_rows[n])), "rows": int(len(r))}
            for n, r in zip(part.names, part.rows)
        ],
        "eval_rows": len(ds.eval),
        "central": _arm_scores(family, ds, part.names, {"*": central}, cfg.seed),
        "federated": _arm_scores(family, ds, part.names, {"*": federated}, cfg.seed),
        "local_only": _arm_scores(family, ds, part.names, local, cfg.seed),
        "per_round": [
            {
                "round": r.round,
                "participants": r.participants,
                "loss": r.loss,
                family.score_name: r.score,
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
    scores = {arm: report[arm]["pooled"] for arm in ("central", "federated", "local_only")}
    # what federation costs against pooling the rows centrally (> 0: federated trails), pooled over the eval rows
    report["gap"] = {**scores, "gap": scores["central"] - scores["federated"]}
    if cfg.compare_dense and cfg.compression != "none":
        dense_weights, _ = _federated(cfg, ds, part, initial, "none", families)
        dense_score = _arm_scores(family, ds, part.names, {"*": dense_weights}, cfg.seed)["pooled"]
        report["bytes_per_update"]["dense_updates_score"] = dense_score
        report["bytes_per_update"]["accuracy_cost"] = dense_score - report["federated"]["pooled"]
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
