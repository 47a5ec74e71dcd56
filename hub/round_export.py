"""A finished federated run -> a signed candidate version in the registry.

The aggregated arrays (``final.npz``) are exported by the family's own exporter (ONNX
fp32, int8, TFLite) into a copy of the base bundle's manifest: same featurizer, labels
and thresholds, ``parent_version`` = the base, ``provenance.federated`` = the run. The
backends are checked against each other on random inputs of the declared shapes (the
hub holds no sessions unless an eval file is configured, which then adds held-out
metrics per backend). The manifest's ``created_at`` is the time the arrays were written,
so exporting the same run twice (a hub restarted mid-export, two replicas) pushes an
identical bundle and the registry answers with the existing version.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hub.archive import pack
from hub.promotion_gate import compare
from hub.registry import Registry
from hub.store.base import RunRecord, VersionRecord
from models.build import git_revision
from models.bundle import (
    ARTIFACTS,
    BACKENDS,
    BundleError,
    read_manifest,
    verify_bundle,
    write_manifest,
)
from models.families import FAMILIES, Families
from models.family import Family
from models.runtime import open_runner
from nexus_wire.datadir import RunDir

#: manifest keys a federated candidate takes over from its base unchanged
_INHERITED = ("name", "family", "labels", "inputs", "outputs", "featurizer", "thresholds", "architecture")
#: and these, where the base has them (tiers, and bundles that ship a subset of the backends)
_INHERITED_IF_SET = ("tier", "default_backend")


def backend_agreement(
    folder: Path, tolerance: dict[str, float], weights: dict[str, np.ndarray], family: Family
) -> dict[str, float]:
    """Max |backend - onnx| over the family's random inputs; refuses a bundle beyond its stated tolerance.

    Only the backends the candidate ships; none is measured without an fp32 ONNX to compare to.
    """
    bundle = verify_bundle(folder)
    if "onnx" not in bundle.backends:
        return {}
    inputs = family.probe_inputs(bundle.manifest, weights, np.random.default_rng(0))
    reference = next(iter(open_runner(bundle, "onnx").run(inputs).values()))
    measured = {}
    for backend in bundle.backends:
        if backend == "onnx":
            continue
        got = next(iter(open_runner(bundle, backend).run(inputs).values()))
        measured[backend] = float(np.max(np.abs(got - reference)))
        if backend in tolerance and measured[backend] > tolerance[backend]:
            raise BundleError(
                f"{backend} artifact deviates from onnx by {measured[backend]:.3g} > stated {tolerance[backend]:g}"
            )
    return measured


def federated_metrics(summary: dict[str, Any], score_name: str) -> dict[str, Any]:
    """The last round's held-out metrics, as the edges measured them (numpy, weighted by rows)."""
    rounds = [r for r in summary.get("rounds", []) if r.get("loss") is not None]
    if not rounds:
        return {}
    last = rounds[-1]
    return {
        "numpy": {
            score_name: last.get("score"),
            "log_loss": last.get("loss"),
            "nodes": last.get("eval_nodes"),
            "round": last.get("round"),
        }
    }


def build_candidate(
    run: RunRecord,
    run_dir: Path,
    summary: dict[str, Any],
    version: str,
    eval_file: Path | None,
    families: Families = FAMILIES,
) -> Path:
    """Write ``run_dir/candidate``: artifacts + manifest (unsigned; the registry signs it)."""
    base = read_manifest(RunDir(run_dir).base)
    family = families.get(base["family"])
    npz = RunDir(run_dir).arrays
    with np.load(npz) as arrays:
        weights = {k: arrays[k] for k in arrays.files}
    folder = RunDir(run_dir).candidate
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # a family whose update is part of the model (emotion-accurate: the head) takes the rest from the base
    family.pipeline().export(weights, folder, base=RunDir(run_dir).base)
    config = run.config
    manifest: dict[str, Any] = {
        **{k: base[k] for k in (*_INHERITED, *_INHERITED_IF_SET) if k in base},
        "version": version,
        "parent_version": run.base_version,
        "created_at": datetime.fromtimestamp(npz.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        "provenance": {
            "federated": {
                "run_id": run.run_id,
                "flower_run_id": run.flower_run_id,
                "rounds": len(summary.get("rounds", [])),
                "participants": sorted(str(n) for n in summary.get("participants", [])),
                "strategy": config["strategy"],
                "min_nodes": config["min_nodes"],
                "fraction": config["fraction"],
                "select": config["select"],
                "local_epochs": config["local_epochs"],
                "compression": config["compression"],
                # SecAgg+: the hub aggregated masked updates and saw only their sum
                "secure_aggregation": bool(config.get("secure_aggregation", False)),
                # candidate vs the base (stable) version on the same nodes' rows (hub/promotion_gate.py)
                "gate": compare(summary.get("rounds", []), run.base_version),
                "seconds": summary.get("seconds"),
                # updates are validated and norm-capped, not clipped and noised for DP
                "dp": {"enabled": False, "max_update_norm": summary.get("settings", {}).get("max_update_norm")},
            },
            "base_version": run.base_version,
            "trainer": {
                "module": "federated.server_app",
                "base_trainer": base.get("provenance", {}).get("trainer", {}).get("module"),
            },
            "git_revision": git_revision(),
        },
    }
    shipped = [b for b, name in ARTIFACTS.items() if (folder / name).is_file()]
    if len(shipped) < len(BACKENDS):  # a subset (the accurate tier ships ONNX only): say why the rest is absent
        why = base.get("missing_backends", {})
        manifest["backends"] = shipped
        manifest["missing_backends"] = {
            b: why.get(b) or f"not exported from a federated update by the {family.name} exporter"
            for b in BACKENDS
            if b not in shipped
        }
    write_manifest(folder, manifest)  # the artifacts only load once the manifest lists them
    stated = dict(base.get("tolerance", {}).get("max_abs_diff", {}))
    manifest["tolerance"] = {
        "reference": "onnx",
        "max_abs_diff": stated,
        "measured_on_random_inputs": backend_agreement(folder, stated, weights, family),
    }
    metrics: dict[str, Any] = {"federated_held_out": federated_metrics(summary, run.score_name or "score")}
    if eval_file is not None:
        evaluate = family.pipeline().evaluate
        # only the numbers: the report also names the version, which a re-export renumbers
        reports = {b: evaluate(folder, Path(eval_file), b, show_progress=False) for b in shipped}
        metrics["hub_eval"] = {
            b: {k: v for k, v in r.items() if k not in ("model", "model_version", "backend")}
            for b, r in reports.items()
        }
    manifest["metrics"] = metrics
    write_manifest(folder, manifest)
    return folder


def register_candidate(
    registry: Registry,
    run: RunRecord,
    run_dir: Path,
    summary: dict[str, Any],
    eval_file: Path | None,
    families: Families = FAMILIES,
) -> VersionRecord:
    """Export, check, sign and store the run's model as the next version (a candidate: not promoted)."""
    taken = [int(r.version) for r in registry.store.list_versions(run.model) if r.version.isdigit()]
    folder = build_candidate(run, run_dir, summary, str(max(taken, default=0) + 1), eval_file, families)
    record, _created = registry.push(pack(folder))
    return record
