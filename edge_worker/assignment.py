"""Deterministic variant assignment (``nexus_wire.assignment.ALGORITHM``, specified in docs/funnels.md).

A visitor's variant is a pure function of (experiment id, salt, visitor id, variant weights),
so every edge gives the same visitor the same variant without talking to the others, and
any client (a JS snippet, a CRM) can reproduce it from the test vectors in the docs.

Algorithm:
  1. ``digest = SHA-256(UTF-8(f"{experiment_id}:{salt}:{visitor_id}"))``
  2. ``u = (big-endian uint64 of digest[0:8] >> 11) / 2**53`` — the top 53 bits, so ``u``
     is exact in an IEEE double (a JS Number) and always in [0, 1).
  3. With ``S_i = w_0 + ... + w_i`` summed left to right in doubles and ``W = S_last``,
     the variant is the first ``i`` with ``u * W < S_i`` (the last one if rounding leaves
     none), i.e. each variant owns a slice of [0, 1) proportional to its weight.

Experiment ids and salts cannot contain ":" (nexus_wire.names.CONFIG_ID), so the hashed
string is unambiguous even when visitor ids do.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from nexus_wire.assignment import SEPARATOR, U_BITS


def bucket(experiment_id: str, salt: str, visitor_id: str) -> float:
    """The visitor's uniform position ``u`` in [0, 1) for this experiment and salt."""
    digest = hashlib.sha256(SEPARATOR.join((experiment_id, salt, visitor_id)).encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - U_BITS)) / float(1 << U_BITS)


def pick(u: float, weights: Sequence[float]) -> int:
    """Index of the variant whose weight slice of [0, 1) contains ``u``."""
    if not weights or any(not (math.isfinite(w) and w > 0) for w in weights):
        raise ValueError(f"weights must be positive and finite, got {list(weights)}")
    cumulative = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    target = u * total
    for i, edge in enumerate(cumulative):
        if target < edge:
            return i
    return len(weights) - 1


def assign(experiment_id: str, salt: str, visitor_id: str, variants: Sequence[tuple[str, float]]) -> str:
    """Variant name for a visitor, given ``(name, weight)`` pairs in config order."""
    u = bucket(experiment_id, salt, visitor_id)
    return variants[pick(u, [w for _, w in variants])][0]


def sticky_assign(
    stored: str | None, experiment_id: str, salt: str, visitor_id: str, variants: Sequence[tuple[str, float]]
) -> str:
    """The visitor's variant, keeping ``stored`` (what the edge store gave them before).

    Thompson allocation changes weights while an experiment runs; a visitor who moved to
    another variant would pollute both arms, so the first assignment wins as long as that
    variant still exists. The caller persists the result when ``stored`` was ``None``.
    """
    if stored is not None and any(name == stored for name, _ in variants):
        return stored
    return assign(experiment_id, salt, visitor_id, variants)
