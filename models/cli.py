"""``nexus models train|eval|show``: build and measure the shipped bundles."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from models.bundle import (
    BACKENDS,
    DEFAULT_REPOSITORY,
    DEFAULT_TIER,
    MANIFEST,
    SIGNATURE,
    Bundle,
    newest_bundle,
    verify_bundle,
)
from models.errors import NexusError
from models.families import FAMILIES
from models.family import Pipeline
from models.metrics import headline
from models.output import Table, View, emit

#: the emotion family's tiers; the fast one is the family itself, another is the family ``<family>-<tier>``
TIERS = (DEFAULT_TIER, "accurate")


def _pipeline(family: str) -> Pipeline:
    return FAMILIES.get(family).pipeline()


def tier_family(family: str, tier: str) -> str:
    """The registry name of ``family``'s ``tier``: ``emotion`` + ``accurate`` -> ``emotion-accurate``."""
    if tier == DEFAULT_TIER:
        return family
    name = f"{family}-{tier}"
    if name not in FAMILIES:
        raise NexusError(f"model family {family!r} has no {tier!r} tier")
    return name


def resolve_bundle(family: str, bundle: str | None, repository: Path = DEFAULT_REPOSITORY) -> Path:
    """An explicit bundle dir, or the newest version of ``family`` in ``repository``."""
    return Path(bundle) if bundle else newest_bundle(repository, family)


def _served_metrics(bundle: Bundle) -> dict:
    """The metrics of the backend the bundle is served with, where they are per backend (else all of them)."""
    metrics = bundle.manifest.get("metrics", {})
    served = metrics.get(bundle.default_backend) if isinstance(metrics, dict) else None
    return {bundle.default_backend: served} if isinstance(served, dict) else metrics


def _bundle_table(bundle: Bundle) -> Table:
    files = bundle.manifest.get("files", {})
    size = sum(int(f.get("bytes", 0)) for f in files.values())
    signed = (bundle.path / SIGNATURE).exists()
    return Table(
        ["MODEL", "VERSION", "PATH", "FILES", "BYTES", "SIGNED", "SCORES"],
        [
            [
                bundle.name,
                bundle.version,
                str(bundle.path),
                len(files),
                size,
                signed,
                headline(_served_metrics(bundle)),
            ]
        ],
    )


def _train(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else DEFAULT_REPOSITORY
    name = tier_family(args.family, args.tier)
    pipeline = _pipeline(name)
    extra = {}
    if args.checkpoint:
        # only a fine-tuned family's pipeline reads a training run from disk
        if "checkpoint" not in inspect.signature(pipeline.train).parameters:
            raise NexusError(f"--checkpoint: {name} is not trained from a fine-tuning checkpoint")
        extra["checkpoint"] = Path(args.checkpoint)
    if args.teacher:
        # only the fast emotion tier distils from a teacher's scores
        if "teacher" not in inspect.signature(pipeline.train).parameters:
            raise NexusError(f"--teacher: {name} does not distil from a teacher")
        extra["teacher"] = Path(args.teacher)
    bundle = pipeline.train(Path(args.data), out, seed=args.seed, show_progress=not args.quiet, **extra)
    summary = {
        "model": bundle.name,
        "version": bundle.version,
        "path": str(bundle.path),
        "metrics": bundle.manifest.get("metrics", {}),
    }
    emit(summary, args.json, _bundle_table(bundle))
    return 0


def _eval(args: argparse.Namespace) -> int:
    bundle_dir = resolve_bundle(args.family, args.bundle)
    # no --backend: the one the bundle says it is served with (an accurate bundle ships no fp32 ONNX)
    backend = args.backend or verify_bundle(bundle_dir).default_backend
    result = _pipeline(args.family).evaluate(bundle_dir, Path(args.data), backend=backend, show_progress=not args.json)
    # one row of the scalar results; per-label scores (a mapping) get a table of their own
    scalars = {k: v for k, v in result.items() if not isinstance(v, dict)}
    views: list[View] = [Table(list(map(str.upper, scalars)), [list(scalars.values())])]
    for key, value in result.items():
        if isinstance(value, dict):
            views += ["", Table(["LABEL", key.upper()], [[k, v] for k, v in value.items()])]
    emit(result, args.json, *views)
    return 0


def _show(args: argparse.Namespace) -> int:
    bundle = verify_bundle(resolve_bundle(args.family, args.bundle))
    emit(bundle.manifest, args.json, _bundle_table(bundle), f"verified: every file's sha256 matches {MANIFEST}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="train, evaluate and inspect model bundles")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    train = msub.add_parser("train", help="train a model family and write a bundle")
    train.add_argument("family", choices=FAMILIES.names(), help="the model family to train")
    train.add_argument("--data", required=True, help="data set folder or file (see README)")
    train.add_argument(
        "--out", help=f"model repository to write <family>/<version>/ into (default: {DEFAULT_REPOSITORY})"
    )
    train.add_argument(
        "--tier",
        choices=TIERS,
        default=DEFAULT_TIER,
        help="emotion: fast (hashed n-gram bag, numpy) or accurate (fine-tuned MiniLM; needs the 'train' extra)",
    )
    train.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="accurate tier: export from the fine-tuned run in DIR (an empty DIR: fine-tune and save it there;"
        " default: fine-tune into ~/.cache/nexus/checkpoints/)",
    )
    train.add_argument(
        "--teacher",
        metavar="NPZ",
        help="fast tier: distil from a teacher's train.tsv scores ('scores': float32 [rows, labels], row order;"
        " default: no teacher, hard labels only)",
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and batches")
    train.add_argument("--quiet", action="store_true", help="no progress on stderr")
    train.add_argument("--json", action="store_true", help="one line of JSON (with every metric), not a table")
    train.set_defaults(func=_train)

    ev = msub.add_parser("eval", help="evaluate a bundle's exported artifact on a data file")
    ev.add_argument("family", choices=FAMILIES.names(), help="the model family of the bundle")
    ev.add_argument("--data", required=True, help="a labelled data file (funnel: sessions CSV; emotion: TSV)")
    ev.add_argument("--backend", choices=BACKENDS, help="the bundle artifact to run (default: the bundle's default)")
    ev.add_argument("--bundle", help="bundle folder (default: the newest shipped version)")
    ev.add_argument("--json", action="store_true", help="one line of JSON, not tables")
    ev.set_defaults(func=_eval)

    show = msub.add_parser("show", help="verify a bundle and summarise it (--json: its whole manifest)")
    show.add_argument("family", choices=FAMILIES.names(), help="the model family of the bundle")
    show.add_argument("--bundle", help="bundle folder (default: the newest shipped version)")
    show.add_argument("--json", action="store_true", help="print the manifest as one line of JSON")
    show.set_defaults(func=_show)
