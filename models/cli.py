"""``nexus models train|eval|show``: build and measure the shipped bundles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.bundle import BACKENDS, DEFAULT_REPOSITORY, newest_bundle, verify_bundle
from models.families import FAMILIES
from models.family import Pipeline


def _pipeline(family: str) -> Pipeline:
    return FAMILIES.get(family).pipeline()


def resolve_bundle(family: str, bundle: str | None, repository: Path = DEFAULT_REPOSITORY) -> Path:
    """An explicit bundle dir, or the newest version of ``family`` in ``repository``."""
    return Path(bundle) if bundle else newest_bundle(repository, family)


def _train(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else DEFAULT_REPOSITORY
    bundle = _pipeline(args.family).train(Path(args.data), out, seed=args.seed, show_progress=not args.quiet)
    summary = {
        "model": bundle.name,
        "version": bundle.version,
        "path": str(bundle.path),
        "metrics": bundle.manifest.get("metrics", {}),
    }
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    bundle_dir = resolve_bundle(args.family, args.bundle)
    result = _pipeline(args.family).evaluate(
        bundle_dir, Path(args.data), backend=args.backend, show_progress=not args.json
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    return 0


def _show(args: argparse.Namespace) -> int:
    bundle = verify_bundle(resolve_bundle(args.family, args.bundle))
    print(json.dumps(bundle.manifest, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="train, evaluate and inspect model bundles")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    train = msub.add_parser("train", help="train a model family and write a bundle")
    train.add_argument("family", choices=FAMILIES.names())
    train.add_argument("--data", required=True, help="data set folder or file (see README)")
    train.add_argument(
        "--out", help=f"model repository to write <family>/<version>/ into (default: {DEFAULT_REPOSITORY})"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress on stderr")
    train.add_argument("--json", action="store_true", help="one-line JSON summary")
    train.set_defaults(func=_train)

    ev = msub.add_parser("eval", help="evaluate a bundle's exported artifact on a data file")
    ev.add_argument("family", choices=FAMILIES.names())
    ev.add_argument("--data", required=True)
    ev.add_argument("--backend", choices=BACKENDS, default="onnx")
    ev.add_argument("--bundle", help="bundle folder (default: the newest shipped version)")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_eval)

    show = msub.add_parser("show", help="verify a bundle and print its manifest")
    show.add_argument("family", choices=FAMILIES.names())
    show.add_argument("--bundle")
    show.set_defaults(func=_show)
