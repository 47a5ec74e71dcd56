"""Split a data set into per-node shares for simulations: by a key column, Dirichlet, or IID.

``dirichlet:ALPHA`` is the usual label-skew benchmark: for each class, the share every
node gets is drawn from Dir(ALPHA); small ALPHA means nodes see very different label
mixes. Multi-label examples are assigned by their first label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from models.errors import NexusError

#: a Dirichlet draw leaving any node with fewer examples than this is redrawn
MIN_PER_NODE = 10
_MAX_DRAWS = 100


@dataclass(frozen=True)
class Partition:
    names: list[str]  # one per node ("region=3", "node-0", ...)
    rows: list[np.ndarray]  # sorted row indices of each node


def by_key(keys: Iterable[object], name: str) -> Partition:
    values = np.asarray([str(k) for k in keys])
    distinct = sorted(set(values.tolist()), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
    return Partition([f"{name}={v}" for v in distinct], [np.flatnonzero(values == v) for v in distinct])


def iid(n_rows: int, nodes: int, seed: int) -> Partition:
    order = np.random.default_rng(seed).permutation(n_rows)
    return Partition([f"node-{i}" for i in range(nodes)], [np.sort(p) for p in np.array_split(order, nodes)])


def primary_class(labels: np.ndarray) -> np.ndarray:
    """Binary [N] labels as they are; a multi-label [N, C] matrix by each row's first label."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    return np.argmax(labels.astype(bool), axis=1)


def dirichlet(labels: np.ndarray, nodes: int, alpha: float, seed: int) -> Partition:
    classes = primary_class(labels)
    if len(classes) < nodes * MIN_PER_NODE:
        raise NexusError(f"{len(classes)} examples are too few for {nodes} nodes of at least {MIN_PER_NODE}")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DRAWS):
        shares: list[list[np.ndarray]] = [[] for _ in range(nodes)]
        for cls in np.unique(classes):
            members = rng.permutation(np.flatnonzero(classes == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(nodes, alpha))) * len(members)).astype(int)[:-1]
            for node, part in enumerate(np.split(members, cuts)):
                shares[node].append(part)
        rows = [np.sort(np.concatenate(s)) for s in shares]
        if min(len(r) for r in rows) >= MIN_PER_NODE:
            return Partition([f"node-{i}" for i in range(nodes)], rows)
    raise NexusError(
        f"no Dirichlet({alpha}) draw gave every one of {nodes} nodes {MIN_PER_NODE} examples; "
        "raise alpha or lower --nodes"
    )


def parse(text: str) -> tuple[str, float]:
    """``region`` | ``iid`` | ``dirichlet:0.5`` -> (kind, alpha)."""
    kind, _, arg = text.partition(":")
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            raise NexusError(f"--partition {text!r}: expected dirichlet:ALPHA with a number ALPHA > 0") from None
        if alpha <= 0:
            raise NexusError(f"--partition {text!r}: ALPHA must be > 0")
        return kind, alpha
    if kind in ("region", "iid") and not arg:
        return kind, 0.0
    raise NexusError(f"--partition {text!r}: expected region, iid or dirichlet:ALPHA")
