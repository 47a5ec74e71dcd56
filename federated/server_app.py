"""The ServerApp the hub's SuperLink runs: rounds of a strategy over the online nodes.

Run config (``flwr run ... --run-config``) names the model, the base it starts from, the
strategy and the output path. The final arrays go to ``output-path`` (.npz) and the run
summary with one record per round beside it (.json, rewritten after every round so the
hub can follow a run; nodes named by the id the hub assigned them, federated/selection.py);
the hub turns them into a registered bundle. With the hub's signing key in
``NEXUS_RECEIPT_KEY`` every node reply gets a signed receipt (federated/receipts.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from federated import codec
from federated.polling_grid import PollingGrid, trace_path
from federated.receipts import FLUSH_TIMEOUT_S, ReceiptBook
from federated.round_outcome import RunFailed
from federated.secure_grid import SecureGrid
from federated.selection import select_nodes
from federated.settings import read_run_config
from federated.strategy import RoundRecord, build_strategy
from models.errors import NexusError
from models.export.onnx_graphs import read_initializers
from models.families import FAMILIES, Families
from models.task import ModelSpec
from nexus_wire.messages import EvaluateInstruction, TrainInstruction
from nexus_wire.runconfig import RunConfig


@dataclass
class RunResult:
    weights: codec.Weights
    rounds: list[RoundRecord]


def load_base(settings: RunConfig, families: Families = FAMILIES) -> tuple[ModelSpec, codec.Weights]:
    """The starting point: a bundle folder (its manifest + fp32 weights), or a JSON spec (fresh weights)."""
    path = Path(settings.base)
    if not settings.base or not path.exists():
        raise NexusError(f"run config base={settings.base!r}: expected a bundle folder or a model spec JSON file")
    if path.is_dir():
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        task = families.get(manifest["family"]).task
        # a task that trains part of a bundle (emotion-accurate: the head) says what a run from it starts with
        starting_point = getattr(task, "starting_point", None)
        if starting_point is not None:
            spec, weights = starting_point(path)
        else:
            weights = read_initializers(path / "model.onnx")
            labels = tuple(manifest.get("labels", ()))
            spec = ModelSpec(manifest["family"], manifest["featurizer"], labels, task.shape_of(weights, labels))
    else:
        spec = ModelSpec.from_json(path.read_text(encoding="utf-8"))
        weights = families.get(spec.family).task.init_weights(spec, settings.seed)
    if spec.family != settings.model:
        raise NexusError(f"base {path} is a {spec.family} model, the run trains {settings.model}")
    return spec, weights


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file


def run_rounds(
    grid: Grid,
    settings: RunConfig,
    spec: ModelSpec,
    initial: codec.Weights,
    on_round: Callable[[RoundRecord], None] | None = None,
    receipts: ReceiptBook | None = None,
    families: Families = FAMILIES,
) -> RunResult:
    """Every round of the run; writes the outputs when ``settings.output_path`` is set.
    With ``receipts``, every reply gets a signed receipt, delivered before the run ends."""
    score_name = families.get(spec.family).score_name
    rounds: list[RoundRecord] = []
    summary: dict[str, Any] = {
        "status": "running",
        "model": spec.family,
        "strategy": settings.strategy,
        "settings": settings.model_dump(),
        "score_name": score_name,
        "rounds": [],
    }
    metrics_path = Path(settings.output_path).with_suffix(".json") if settings.output_path else None
    if metrics_path is not None:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)

    grid, names = select_nodes(grid, settings.select, settings.timeout_s, receipts)
    secure = SecureGrid(grid, settings, receipts) if settings.secure_aggregation else None
    if secure is not None:
        grid = secure

    def name(node: int) -> str:
        # the hub's id for the node (``n-...``), or Flower's when the node did not say
        return names.get(node, str(node))

    def record(r: RoundRecord) -> None:
        rounds.append(r)
        protocol = secure.amend(r, name) if secure is not None else {}
        summary["rounds"].append(
            {
                **r.to_dict(),
                "nodes": sorted(name(n) for n in r.nodes),
                "rejected": [{**x, "node": name(x["node"])} for x in r.rejected],
                "failures": [{**x, "node": name(x["node"])} for x in r.failures],
                **protocol,
            }
        )
        if metrics_path is not None:
            _write_json(metrics_path, summary)
        if on_round is not None:
            on_round(r)

    # the promotion gate: the last round evaluates the base (the stable version) beside the candidate
    strategy = build_strategy(settings, score_name, record, receipts, baseline=codec.to_record(initial))
    # dict(): the same values, typed as Flower's wider record values
    train_config = ConfigRecord(dict(TrainInstruction.from_run(settings, spec.to_json()).to_config()))
    evaluate_config = ConfigRecord(dict(EvaluateInstruction.from_run(settings, spec.to_json()).to_config()))
    started = time.time()
    try:
        result = strategy.start(
            grid, codec.to_record(initial), settings.rounds, settings.timeout_s, train_config, evaluate_config
        )
    except RunFailed as failed:
        # an honest end: the summary says why, and without arrays the hub registers nothing
        if receipts is not None:
            receipts.flush(grid, min(settings.timeout_s, FLUSH_TIMEOUT_S))
        summary.update(
            status="failed",
            reason=str(failed),
            failed_round=failed.server_round,
            seconds=round(time.time() - started, 3),
        )
        if metrics_path is not None:
            _write_json(metrics_path, summary)
        raise
    weights = codec.from_record(result.arrays) if result.arrays is not None and len(result.arrays) else initial
    if receipts is not None:
        receipts.flush(grid, min(settings.timeout_s, FLUSH_TIMEOUT_S))
    if metrics_path is not None:
        out = Path(settings.output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as fh:  # a file object: np.savez would otherwise append ".npz"
            np.savez(fh, **weights)  # type: ignore[arg-type]  # mypy matches **weights to allow_pickle: bool too
        participants = sorted({name(node) for r in rounds for node in r.nodes})
        summary.update(
            status="finished",
            seconds=round(time.time() - started, 3),
            model_spec=json.loads(spec.to_json()),
            participants=participants,
        )
        _write_json(metrics_path, summary)
    return RunResult(weights, rounds)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = read_run_config(context.run_config)
    spec, initial = load_base(settings)
    # replies seen within POLL_S instead of at Flower's 3 s polls; the trace says where the time went
    polling = PollingGrid(grid)
    try:
        run_rounds(polling, settings, spec, initial, receipts=ReceiptBook.from_env())
    except RunFailed as failed:  # the summary says so; the ServerApp itself ended as it should
        log(WARNING, "the run failed: %s", failed)
    finally:
        if settings.output_path:
            with contextlib.suppress(OSError):  # never hide why the run failed
                polling.trace.write(trace_path(settings.output_path))
