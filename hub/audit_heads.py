"""Per node, the largest signed audit tree head the hub holds, and a sticky regression when a
later heartbeat reports a shorter log, another root at the same size, or a larger head that is
not consistent with the held one (the log was rewritten, then grown past it).

A head larger than the held one replaces it only with an RFC 6962 consistency proof from the
held head (``audit_consistency``, checked with nexus_wire/merkle.py). The heartbeat answer
names the held head (``audit_held``), so the node proves from it on its next heartbeat; a
heartbeat without a proof from the held size (the node restarted and does not know it yet)
leaves the held head as it is, and a proof that does not verify is the ``inconsistent``
regression. The first head a node reports is held as it is: there is nothing to compare.

An edge's own ``nexus audit verify`` cannot see its newest entries removed together with
their signed heads, nor a log rewritten and re-signed under its own key (docs/privacy.md); a
head held elsewhere can. Both live inside the stored heartbeat dict, carried forward by the
heartbeat handler, so the SQLite and Redis stores keep them without a schema change. The
read-then-write is per node, and a node sends one heartbeat at a time (its sync leader waits
for each answer). Only a heartbeat the node gave up on (10 s client timeout) and the hub
handles after the next one could raise a false alarm: ``nexus audit verify --head`` on the
regression's ``was`` settles it (the log is consistent with that head, or it is not).

The hub cannot check a head's signature (it never gets the node's audit key): the
officer does, with ``nexus audit verify --head`` on the head the hub kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_wire.merkle import verify_consistency

HEAD = "audit_head"
LARGEST = "audit_largest_head"
REGRESSION = "audit_regression"
#: the heartbeat's proof; checked here and not stored
CONSISTENCY = "audit_consistency"
#: the kinds of regression
SHORTER, DIFFERENT_ROOT, INCONSISTENT = "shorter", "different-root", "inconsistent"


def _proven(held: Mapping[str, Any], head: Mapping[str, Any], consistency: Mapping[str, Any] | None) -> bool | None:
    """Whether ``consistency`` proves ``head`` extends ``held``; None when it is no proof from
    the held size (absent, or from a head the node thought the hub held)."""
    if consistency is None or consistency["first_size"] != held["size"]:
        return None
    return verify_consistency(
        held["size"],
        head["size"],
        bytes.fromhex(held["root"]),
        bytes.fromhex(head["root"]),
        [bytes.fromhex(p) for p in consistency["proof"]],
    )


def _regression(held: Mapping[str, Any], head: Mapping[str, Any] | None, consistency: Any) -> str | None:
    # a heartbeat without a head after one with a head: the log was emptied
    if head is None or head["size"] < held["size"]:
        return SHORTER
    if head["size"] == held["size"]:
        return DIFFERENT_ROOT if head["root"] != held["root"] else None
    return INCONSISTENT if _proven(held, head, consistency) is False else None


def track(
    previous: Mapping[str, Any] | None, beat: Mapping[str, Any], now: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``beat`` (without its proof) with the held head and any regression carried forward
    from the ``previous`` stored heartbeat, and the regression this heartbeat newly shows
    (None when there is none, or when one is already recorded: the first one stays)."""
    previous = previous or {}
    stored = {k: v for k, v in beat.items() if k != CONSISTENCY}
    held, regression = previous.get(LARGEST), previous.get(REGRESSION)
    head, consistency = beat.get(HEAD), beat.get(CONSISTENCY)
    new = None
    if held is None:
        held = None if head is None else dict(head)
    else:
        kind = _regression(held, head, consistency)
        if kind is not None and regression is None:
            # "was" is the whole signed head: the evidence an officer passes to --head
            regression = new = {"kind": kind, "was": dict(held), "now": None if head is None else dict(head), "at": now}
        elif kind is None and head is not None and head["size"] > held["size"] and _proven(held, head, consistency):
            held = dict(head)
    return {**stored, LARGEST: held, REGRESSION: regression}, new


def held_answer(beat: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``audit_held`` member of the heartbeat answer: what the node's next proof starts from."""
    held = beat.get(LARGEST)
    return None if held is None else {"size": held["size"], "root": held["root"]}


def short(head: Mapping[str, Any] | None) -> str:
    """``size 42, root 1a2b3c4d5e6f…`` (or ``no head``) for logs and tables."""
    if head is None:
        return "no head"
    return f"size {head['size']}, root {str(head['root'])[:12]}…"


def label(regression: Mapping[str, Any]) -> str:
    """``inconsistent`` for a rewritten log, ``regression`` for one that went back."""
    return "inconsistent" if regression.get("kind") == INCONSISTENT else "regression"


def describe(regression: Mapping[str, Any]) -> str:
    if regression.get("kind") == INCONSISTENT:
        return (
            f"audit log rewritten: the node reported {short(regression['now'])} with a consistency proof "
            f"that does not verify from the {short(regression['was'])} the hub held"
        )
    return (
        f"audit log went back: the hub held {short(regression['was'])}; "
        f"the node then reported {short(regression['now'])}"
    )
