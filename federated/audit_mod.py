"""ClientApp mod: every message a node sends to the SuperLink goes into its audit log, and
training updates can carry differential privacy within the node's privacy budget.

Recording (channel ``flower``): for each reply, its kind (``model-update``,
``evaluation-metrics``, ``node-tags``, ``receipt-ack``, ``error``), the id of the
instruction it answers, every array's name, shape, dtype, bytes and sha256, the
metric/config values, and the DP settings with the epsilon spent. The entry's
``bytes``/``sha256`` are those of :func:`federated.digest.reply_body`; Flower's own framing
around them is overhead the canary test measures. The hub's receipts for earlier replies
arrive with later messages (federated/receipts.py) and are attached to their entries here.
Without a ``data-dir`` in the node config (the simulation's in-memory partitions) there
is no node and nothing is recorded.

DP (run config ``dp-noise-multiplier`` > 0 and ``dp-clipping-norm``): the update
(returned weights minus the round's global weights) is clipped to L2 norm C and Gaussian
noise of std sigma*C is added to every weight: Flower's fixed-clipping scheme, applied
here because our updates travel as sparse int8 deltas that Flower's mods cannot read.
The noise covers every weight, so a private reply is dense fp32. Its metrics keep only
``num-examples`` (the training loss is not private). The node's budget lives in its
data dir (``privacy-budget.json``, set with the edge's ``privacy_epsilon`` setting) and is
charged per round by the RDP accountant (edge_worker/dp_budget.py). A round that would
exceed it, or any un-noised round on a node that has a budget, is refused before training:
a ``refusal`` entry, an error reply to the server.

Error replies carry a fixed text (a budget refusal, or the exception's class and, for our
own one-line errors, their message): Flower's default would send any exception's text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from edge_worker.audit import AuditError, AuditLog
from edge_worker.dp_budget import BUDGET_FILE, BudgetExhausted, PrivacyBudget
from edge_worker.payloads import MODEL_UPDATE
from federated import codec
from federated.digest import describe, reply_body
from federated.receipts import ACK_KIND, receipts_in
from federated.receipts import MESSAGE_TYPE as RECEIPTS_MESSAGE
from federated.strategy import ARRAYS, CONFIG, METRICS
from models.errors import NexusError

log = logging.getLogger("nexus.federated.audit")
CHANNEL, DESTINATION = "flower", "superlink"
RUN_NOISE, RUN_CLIP = "dp-noise-multiplier", "dp-clipping-norm"
KINDS = {"train": MODEL_UPDATE, "evaluate": "evaluation-metrics", "query": "node-tags", RECEIPTS_MESSAGE: ACK_KIND}
ERROR_KIND = "error"
_NUMERIC = "fiub"


@dataclass(frozen=True)
class DpSettings:
    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> DpSettings:
        try:
            dp = cls(float(config.get(RUN_NOISE, 0.0)), float(config.get(RUN_CLIP, 1.0)))
        except (TypeError, ValueError):
            raise NexusError(f"run config {RUN_NOISE} and {RUN_CLIP} must be numbers") from None
        if not (
            math.isfinite(dp.noise_multiplier)
            and dp.noise_multiplier >= 0
            and math.isfinite(dp.clipping_norm)
            and dp.clipping_norm > 0
        ):
            raise NexusError(f"run config needs {RUN_NOISE} >= 0 and {RUN_CLIP} > 0")
        return dp

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    data_dir = context.node_config.get("data-dir")
    if not data_dir:
        return call_next(msg, context)
    category = msg.metadata.message_type.split(".")[0]
    kind = KINDS.get(msg.metadata.message_type) or KINDS.get(category, category)
    with AuditLog(Path(str(data_dir))) as audit:
        _keep_receipts(audit, msg)
        try:
            reply, dp = _handle(msg, context, call_next, Path(str(data_dir)), category)
            _check_numeric(reply)
        except _Refused as refused:
            audit.record_refusal(CHANNEL, DESTINATION, kind, refused.reason, summary=refused.summary)
            reply, dp = _error_reply(msg, refused.reason), None
        _record(audit, msg, reply, kind, dp)
    return reply


def _keep_receipts(audit: AuditLog, msg: Message) -> None:
    """Attach the hub's receipts for earlier replies (federated/receipts.py) to their entries;
    one that does not verify is kept all the same, as evidence, and logged."""
    for receipt in receipts_in(msg):
        entry_id = audit.entry_for_message(CHANNEL, str(receipt.get("message", "")))
        if entry_id is None:
            log.warning("a receipt for message %.16s, which this node's log does not hold", receipt.get("message"))
            continue
        try:
            problem = audit.attach_receipt(entry_id, receipt)
        except AuditError as exc:  # a duplicate delivery
            log.warning("%s", exc)
            continue
        if problem is not None:
            log.warning("the receipt for audit entry %d does not verify: %s", entry_id, problem)


class _Refused(Exception):
    def __init__(self, reason: str, summary: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.summary = summary


def _handle(
    msg: Message, context: Context, call_next: ClientAppCallable, data_dir: Path, category: str
) -> tuple[Message, dict[str, Any] | None]:
    dp = DpSettings.from_run_config(context.run_config) if category == "train" else None
    budget = _budget(data_dir, dp) if dp is not None else None
    if dp is not None and budget is not None and not budget.can_spend(dp.noise_multiplier):
        raise _Refused(_over_budget(budget, dp), _dp_summary(dp, budget))
    try:
        reply = call_next(msg, context)
    except Exception as exc:
        log.exception("the ClientApp failed on a %s message", category)
        return _error_reply(
            msg, f"{type(exc).__name__}: {exc}" if isinstance(exc, NexusError) else type(exc).__name__
        ), None
    if dp is None or reply.has_error() or not dp.enabled:
        return reply, None
    _privatize(msg, reply, dp, np.random.default_rng())
    if budget is None:
        return reply, _dp_summary(dp, None)
    round_ = msg.content[CONFIG].get("server-round", 0) if CONFIG in msg.content else 0
    try:
        epsilon = budget.spend(dp.noise_multiplier, label=f"run {context.run_id} round {round_}")
    except BudgetExhausted as exc:  # another process of this node spent it meanwhile
        raise _Refused(str(exc), _dp_summary(dp, budget)) from None
    return reply, {**_dp_summary(dp, budget), "epsilon": epsilon}


def _budget(data_dir: Path, dp: DpSettings) -> PrivacyBudget | None:
    """The node's accountant: when it has a budget file, or the run adds noise to record."""
    if (data_dir / BUDGET_FILE).exists() or dp.enabled:
        return PrivacyBudget(data_dir)
    return None


def _over_budget(budget: PrivacyBudget, dp: DpSettings) -> str:
    if not dp.enabled:
        return f"privacy budget set (epsilon {budget.epsilon_budget:g}) and the run adds no noise ({RUN_NOISE} = 0): not taking part"
    return (
        f"privacy budget exhausted: epsilon would reach {budget.epsilon_after(dp.noise_multiplier):.3f} "
        f"> budget {budget.epsilon_budget:g} (spent {budget.spent:.3f}): not taking part"
    )


def _dp_summary(dp: DpSettings, budget: PrivacyBudget | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "noise_multiplier": dp.noise_multiplier,
        "clipping_norm": dp.clipping_norm,
        "sample_rate": 1.0,
    }
    if budget is not None:
        summary.update(delta=budget.delta, epsilon_spent=budget.spent, epsilon_budget=budget.epsilon_budget)
    return summary


def _privatize(msg: Message, reply: Message, dp: DpSettings, rng: np.random.Generator) -> None:
    """Clip the update to ``C`` and add N(0, (sigma C)^2) to every weight, in place."""
    base = codec.from_record(msg.content[ARRAYS])
    new = codec.decode(reply.content[ARRAYS], base)
    delta = {name: new[name].astype(np.float64) - base[name] for name in base}
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
    scale = min(1.0, dp.clipping_norm / norm) if norm > 0 else 1.0
    std = dp.noise_multiplier * dp.clipping_norm
    noisy = {
        name: (base[name] + d * scale + rng.normal(0.0, std, d.shape)).astype(np.float32) for name, d in delta.items()
    }
    examples = reply.content[METRICS]["num-examples"]
    reply.content = RecordDict({ARRAYS: codec.to_record(noisy), METRICS: MetricRecord({"num-examples": examples})})


def _check_numeric(reply: Message) -> None:
    """Only numbers leave through Flower (a string array would be free text)."""
    if reply.has_error():
        return
    bad = sorted(
        f"{rn}/{n}"
        for rn, record in reply.content.array_records.items()
        for n, a in record.items()
        if np.dtype(a.dtype).kind not in _NUMERIC
    )
    if bad:
        raise _Refused(f"non-numeric arrays refused: {', '.join(bad)}", {})


def _error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)


def _record(audit: AuditLog, msg: Message, reply: Message, kind: str, dp: dict[str, Any] | None) -> None:
    # "message" (the instruction this replies to) is what the hub's receipt names
    summary: dict[str, Any] = {
        "message_type": msg.metadata.message_type,
        "run": msg.metadata.run_id,
        "message": msg.metadata.message_id,
    }
    if reply.has_error():
        audit.record_send(
            CHANNEL,
            DESTINATION,
            ERROR_KIND,
            reply_body(reply),
            {**summary, "code": int(reply.error.code), "reason": reply.error.reason},
        )
        return
    body, described = describe(reply.content)
    audit.record_send(CHANNEL, DESTINATION, kind, body, {**summary, **described, "dp": dp})
