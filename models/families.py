"""The registry of model families: every family the system knows, looked up by name.

:data:`FAMILIES` holds the shipped families. The edge's app, the hub's rounds and the
federated apps take a :class:`Families` (default: :data:`FAMILIES`), so a test or an
embedding application can serve a family of its own without editing any of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.bundle import BundleError, verify_bundle
from models.emotion.family import EMOTION
from models.emotion_accurate.family import EMOTION_ACCURATE
from models.errors import NexusError
from models.family import Family
from models.funnel.family import FUNNEL
from models.predictor import Predictor
from models.runtime import open_runner
from nexus_wire.names import MODEL_NAME, fullmatch


class UnknownFamily(NexusError):
    """A model name no family in the registry answers to."""


class Families:
    """An immutable, ordered set of families keyed by name."""

    def __init__(self, families: Iterable[Family]) -> None:
        self._families: dict[str, Family] = {}
        for family in families:
            if not fullmatch(MODEL_NAME, family.name):
                raise ValueError(f"model family name {family.name!r} does not match {MODEL_NAME}")
            if family.name in self._families:
                raise ValueError(f"two model families are named {family.name!r}")
            self._families[family.name] = family

    def get(self, name: str) -> Family:
        try:
            return self._families[name]
        except KeyError:
            raise UnknownFamily(f"unknown model family {name!r} (expected one of {', '.join(self.names())})") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._families)

    def with_family(self, family: Family) -> Families:
        """A new registry holding these families and ``family``."""
        return Families([*self, family])

    def __contains__(self, name: object) -> bool:
        return name in self._families

    def __iter__(self) -> Iterator[Family]:
        return iter(self._families.values())

    def __len__(self) -> int:
        return len(self._families)


FAMILIES = Families([EMOTION, EMOTION_ACCURATE, FUNNEL])


def get(name: str) -> Family:
    """The shipped family ``name``; raises UnknownFamily (a NexusError) naming the known ones."""
    return FAMILIES.get(name)


def load_predictor(
    bundle_dir: str | os.PathLike[str],
    backend: str = "onnx",
    threads: int = 1,
    public_key: Ed25519PublicKey | None = None,
    families: Families = FAMILIES,
) -> Predictor:
    """A verified bundle served by one of its artifacts, with the predictor of the family its manifest names."""
    bundle = verify_bundle(bundle_dir, public_key)
    name = bundle.manifest.get("family")
    if not isinstance(name, str) or name not in families:
        raise BundleError(f"{bundle.path}: unknown model family {name!r}")
    return families.get(name).predictor(bundle, open_runner(bundle, backend, threads))
