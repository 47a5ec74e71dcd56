"""Why a node took no part in a round, as its error reply says and the hub records it.

A node that cannot train (or evaluate) answers the ServerApp with a Flower error reply
whose reason is ``"<kind>: <detail>"``: one of :data:`KINDS` and a short fixed text (no
raw data, no local paths). The ServerApp records one ``{"node", "step", "kind",
"reason"}`` per failing node and round in the run summary; the hub, its CLI and its
dashboard show them by :data:`LABELS`. A reason from anyone else (Flower's own "ClientApp
stopped responding.", an older node) reads as kind ``error``; a node asked that never
answered within the step's timeout is ``no-reply``.
"""

from __future__ import annotations

#: the node's local store holds no (or too few) labelled examples of the model
NO_DATA = "no-data"
#: the node's differential-privacy budget would be exceeded (or the run adds no noise to a budgeted node)
DP_BUDGET = "dp-budget"
#: the node's app guard refused the app: not signed by the hub key it pinned
REFUSED_APP = "refused-app"
#: anything else that went wrong on the node
ERROR = "error"
#: asked, but no reply within the step's timeout (offline, crashed, or too slow)
NO_REPLY = "no-reply"
KINDS = (NO_DATA, DP_BUDGET, REFUSED_APP, ERROR, NO_REPLY)
LABELS = {
    NO_DATA: "no data",
    DP_BUDGET: "over DP budget",
    REFUSED_APP: "refused app",
    ERROR: "error",
    NO_REPLY: "no reply",
}
#: the steps of a round a failure belongs to
TRAIN, EVALUATE = "train", "evaluate"
#: longest reason kept: an error reply is a sentence, not a log
MAX_REASON = 300


def failure_reason(kind: str, detail: str) -> str:
    """The error reply's reason for a failure of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown failure kind {kind!r}")
    return _clean(f"{kind}: {detail}")


def parse_failure(reason: str) -> tuple[str, str]:
    """``(kind, detail)`` of an error reply's reason; any other text is kind ``error``."""
    text = _clean(reason)
    kind, sep, detail = text.partition(": ")
    if sep and kind in KINDS:
        return kind, detail
    return ERROR, text


def _clean(text: str) -> str:
    # one printable line of bounded length, whatever a node sent
    flat = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 1] + "…"
