"""What a node tells the hub when it cannot take part: the reason of its error reply.

The ClientApp raises a :class:`NodeFailure` of the matching kind (``nexus_wire.outcomes``);
the audit mod (and the in-process grid) turn any exception into the reply's reason with
:func:`reason_of`: our own one-line errors keep their text, any other exception only its
class, so no stack trace, local path or data value leaves the node.
"""

from __future__ import annotations

from models.errors import NexusError
from nexus_wire.outcomes import ERROR, KINDS, NO_DATA, failure_reason, parse_failure


class NodeFailure(NexusError):
    """A node's reason not to take part; its text goes to the hub, so it names no local detail."""

    kind = ERROR


class NoLocalData(NodeFailure):
    """The local store holds no (or too few) labelled examples of the run's model."""

    kind = NO_DATA


def reason_of(exc: BaseException) -> str:
    """The error reply's reason for ``exc``."""
    if isinstance(exc, NodeFailure):
        return failure_reason(exc.kind, str(exc))
    if isinstance(exc, NexusError):
        if text_kind(str(exc)) is not None:  # a reason passed on (a mod re-raising a handler's error reply)
            return failure_reason(*parse_failure(str(exc)))
        return failure_reason(ERROR, f"{type(exc).__name__}: {exc}")
    return failure_reason(ERROR, type(exc).__name__)


def text_kind(text: str) -> str | None:
    """The kind a reason names at its start, or None when it names none."""
    kind, sep, _ = text.partition(": ")
    return kind if sep and kind in KINDS else None
