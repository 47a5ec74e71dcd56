"""A round's outcome on the ServerApp: which nodes asked took no part and why, and whether the run goes on.

Every node asked to train or evaluate either replies with content, replies with an error
(its reason, ``"<kind>: <detail>"``, from nexus_wire/outcomes.py) or does not reply within
the step's timeout (``no-reply``). :func:`failures` turns a step's replies into one record
per failing node. A round in which fewer nodes trained (updates accepted) than the run's
``min-nodes`` ends the run: :func:`require_trainers` raises :class:`RunFailed`, the
ServerApp writes the summary as ``failed`` with the reason and no arrays, and the hub
registers nothing (hub/rounds.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from models.errors import NexusError
from nexus_wire.outcomes import LABELS, NO_REPLY, TRAIN, parse_failure


class RunFailed(NexusError):
    """The run cannot go on; its text is the run's reason."""

    def __init__(self, server_round: int, reason: str) -> None:
        super().__init__(reason)
        self.server_round = server_round


def failures(step: str, asked: Iterable[int], replies: Iterable[Message]) -> list[dict[str, Any]]:
    """``{"node", "step", "kind", "reason"}`` for each node asked that replied with an error or not at all."""
    out: list[dict[str, Any]] = []
    answered = set()
    for msg in replies:
        node = msg.metadata.src_node_id
        answered.add(node)
        if msg.has_error():
            kind, detail = parse_failure(msg.error.reason or "")
            out.append({"node": node, "step": step, "kind": kind, "reason": detail})
    for node in sorted(set(asked) - answered):
        out.append({"node": node, "step": step, "kind": NO_REPLY, "reason": "no reply within the step's timeout"})
    return sorted(out, key=lambda f: f["node"])


def require_trainers(
    server_round: int, trained: int, asked: int, min_nodes: int, round_failures: list[dict[str, Any]], rejected: int
) -> None:
    """Raise :class:`RunFailed` when fewer than ``min_nodes`` nodes trained in the round."""
    if trained >= min_nodes:
        return
    kinds = Counter(LABELS.get(f["kind"], f["kind"]) for f in round_failures if f["step"] == TRAIN)
    why = [f"{n} {label}" for label, n in sorted(kinds.items())]
    if rejected:
        why.append(f"{rejected} update(s) rejected")
    raise RunFailed(
        server_round,
        f"round {server_round}: {trained} of {asked} node(s) trained, fewer than min-nodes {min_nodes}"
        + (f" ({', '.join(why)})" if why else ""),
    )
