"""Per node, the largest signed audit tree head the hub has seen, and a sticky regression
when a later heartbeat reports a shorter log, or another root at the same size.

An edge's own ``nexus audit verify`` cannot see its newest entries removed together with
their signed heads (docs/privacy.md); a head held elsewhere can. Both live inside the
stored heartbeat dict, carried forward by the heartbeat handler, so the SQLite and Redis
stores keep them without a schema change. The read-then-write is per node, and a node
sends one heartbeat at a time (its sync leader waits for each answer). Only a heartbeat
the node gave up on (10 s client timeout) and the hub handles after the next one could
raise a false alarm: ``nexus audit verify --head`` on the regression's ``was`` settles it
(the log still holds that head, or it does not).

The hub cannot check a head's signature (it never gets the node's audit key): the
officer does, with ``nexus audit verify --head`` on the head the hub kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEAD = "audit_head"
LARGEST = "audit_largest_head"
REGRESSION = "audit_regression"


def _regressed(largest: Mapping[str, Any], head: Mapping[str, Any] | None) -> bool:
    # a heartbeat without a head after one with a head: the log was emptied
    if head is None:
        return True
    return head["size"] < largest["size"] or (head["size"] == largest["size"] and head["root"] != largest["root"])


def track(
    previous: Mapping[str, Any] | None, beat: dict[str, Any], now: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``beat`` with the largest head and any regression carried forward from the
    ``previous`` stored heartbeat, and the regression this heartbeat newly shows (None
    when there is none, or when one is already recorded: the first one stays)."""
    previous = previous or {}
    largest, regression = previous.get(LARGEST), previous.get(REGRESSION)
    head = beat.get(HEAD)
    new = None
    if largest is not None and _regressed(largest, head):
        if regression is None:
            # "was" is the whole signed head: the evidence an officer passes to --head
            regression = new = {"was": dict(largest), "now": None if head is None else dict(head), "at": now}
    elif head is not None and (largest is None or head["size"] > largest["size"]):
        largest = dict(head)
    return {**beat, LARGEST: largest, REGRESSION: regression}, new


def short(head: Mapping[str, Any] | None) -> str:
    """``size 42, root 1a2b3c4d5e6f…`` (or ``no head``) for logs and tables."""
    if head is None:
        return "no head"
    return f"size {head['size']}, root {str(head['root'])[:12]}…"


def describe(regression: Mapping[str, Any]) -> str:
    return (
        f"audit log went back: the hub held {short(regression['was'])}; "
        f"the node then reported {short(regression['now'])}"
    )
