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
The noise covers every weight, so a private reply is dense fp32. Under secure aggregation
(federated/secure_aggregation.py, the next mod) the noise goes on before the update is
masked; this mod checks the budget at the setup stage and charges it for the masked update. Its metrics keep only
``num-examples`` (the training loss is not private). The node's budget lives in its
data dir (``privacy-budget.json``, set with the edge's ``privacy_epsilon`` setting) and is
charged per round by the RDP accountant (edge_worker/audit/dp_budget.py). A round that would
exceed it, or any un-noised round on a node that has a budget, is refused before training:
a ``refusal`` entry, an error reply to the server.

Error replies carry a fixed text, ``"<kind>: <detail>"`` (nexus_wire/outcomes.py): a budget
refusal, or the exception's class and, for our own one-line errors, their message
(federated/failures.py); Flower's default would send any exception's text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from edge_worker.audit import AuditError, AuditLog, BudgetExhausted, PrivacyBudget
from federated import codec
from federated.digest import describe, reply_body
from federated.dp import clip_and_noise
from federated.failures import reason_of
from federated.receipts import receipts_in
from federated.secure_aggregation import STAGE_KINDS, audit_summary, stage_of
from federated.settings import read_run_config
from nexus_wire import outcomes
from nexus_wire.datadir import EdgeDataDir
from nexus_wire.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, RECEIPTS_MESSAGE, TrainInstruction
from nexus_wire.payloads import ERROR, EVALUATION_METRICS, FLOWER_CHANNEL, MODEL_UPDATE, NODE_TAGS, RECEIPT_ACK
from nexus_wire.runconfig import RunConfig, flower_key

log = logging.getLogger("nexus.federated.audit")
DESTINATION = "superlink"
KINDS = {"train": MODEL_UPDATE, "evaluate": EVALUATION_METRICS, "query": NODE_TAGS, RECEIPTS_MESSAGE: RECEIPT_ACK}
_NUMERIC = "fiub"
#: the messages whose privacy budget this mod checks: a plain train step, a secure round's setup and masked update
_BUDGET_STAGES = (None, Stage.SETUP, Stage.COLLECT_MASKED_VECTORS)


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    layout = EdgeDataDir.from_node_config(context.node_config)
    if layout is None:
        return call_next(msg, context)
    category = msg.metadata.message_type.split(".")[0]
    # read before the SecAgg+ mod consumes the stage from the message
    stage, secure = stage_of(msg), audit_summary(msg)
    kind = STAGE_KINDS.get(stage or "") or KINDS.get(msg.metadata.message_type) or KINDS.get(category, category)
    with AuditLog(layout.root) as audit:
        _keep_receipts(audit, msg)
        try:
            reply, dp = _handle(msg, context, call_next, layout.root, category, stage)
            _check_numeric(reply)
        except _Refused as refused:
            audit.record_refusal(FLOWER_CHANNEL, DESTINATION, kind, refused.reason, summary=refused.summary)
            reply, dp = _error_reply(msg, outcomes.failure_reason(refused.kind, refused.reason)), None
        _record(audit, msg, reply, kind, dp, secure)
    return reply


def _keep_receipts(audit: AuditLog, msg: Message) -> None:
    """Attach the hub's receipts for earlier replies (federated/receipts.py) to their entries;
    the log refuses one that does not bind that entry's node, message and bytes (a refusal
    entry), and it is logged here."""
    for receipt in receipts_in(msg):
        entry_id = audit.entry_for_message(FLOWER_CHANNEL, str(receipt.get("message", "")))
        if entry_id is None:
            log.warning("a receipt for message %.16s, which this node's log does not hold", receipt.get("message"))
            continue
        try:
            problem = audit.attach_receipt(entry_id, receipt)
        except AuditError as exc:  # a duplicate delivery
            log.warning("%s", exc)
            continue
        if problem is not None:
            log.warning("refused the hub's receipt for audit entry %d: %s", entry_id, problem)


class _Refused(Exception):
    def __init__(self, reason: str, summary: dict[str, Any], kind: str = outcomes.ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.summary = summary
        self.kind = kind  # of the error reply (nexus_wire/outcomes.py)


def _handle(
    msg: Message, context: Context, call_next: ClientAppCallable, data_dir: Path, category: str, stage: str | None
) -> tuple[Message, dict[str, Any] | None]:
    # a secure round trains in its masked-vector stage; the setup stage only checks the budget
    dp = read_run_config(context.run_config) if category == "train" and stage in _BUDGET_STAGES else None
    budget = _budget(data_dir, dp) if dp is not None else None
    if dp is not None and budget is not None and not budget.can_spend(dp.dp_noise_multiplier):
        raise _Refused(_over_budget(budget, dp), _dp_summary(dp, budget), outcomes.DP_BUDGET)
    try:
        reply = call_next(msg, context)
    except Exception as exc:
        log.exception("the ClientApp failed on a %s message", category)
        return _error_reply(msg, reason_of(exc)), None
    if dp is None or reply.has_error() or not dp.dp_enabled or stage == Stage.SETUP:
        return reply, None
    if stage is None:  # a masked update was noised before it was masked
        _privatize(msg, reply, dp, np.random.default_rng())
    if budget is None:
        return reply, _dp_summary(dp, None)
    # the ClientApp has read this instruction already: a bad one never gets here
    round_ = TrainInstruction.from_config(msg.content.config_records[CONFIG]).server_round
    try:
        epsilon = budget.spend(dp.dp_noise_multiplier, label=f"run {context.run_id} round {round_}")
    except BudgetExhausted as exc:  # another process of this node spent it meanwhile
        raise _Refused(str(exc), _dp_summary(dp, budget), outcomes.DP_BUDGET) from None
    return reply, {**_dp_summary(dp, budget), "epsilon": epsilon}


def _budget(data_dir: Path, dp: RunConfig) -> PrivacyBudget | None:
    """The node's accountant: when it has a budget file, or the run adds noise to record."""
    if PrivacyBudget.exists(data_dir) or dp.dp_enabled:
        return PrivacyBudget(data_dir)
    return None


def _over_budget(budget: PrivacyBudget, dp: RunConfig) -> str:
    if not dp.dp_enabled:
        return (
            f"privacy budget set (epsilon {budget.epsilon_budget:g}) and the run adds no noise "
            f"({flower_key('dp_noise_multiplier')} = 0): not taking part"
        )
    return (
        f"privacy budget exhausted: epsilon would reach {budget.epsilon_after(dp.dp_noise_multiplier):.3f} "
        f"> budget {budget.epsilon_budget:g} (spent {budget.spent:.3f}): not taking part"
    )


def _dp_summary(dp: RunConfig, budget: PrivacyBudget | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "noise_multiplier": dp.dp_noise_multiplier,
        "clipping_norm": dp.dp_clipping_norm,
        "sample_rate": 1.0,
    }
    if budget is not None:
        summary.update(delta=budget.delta, epsilon_spent=budget.spent, epsilon_budget=budget.epsilon_budget)
    return summary


def _privatize(msg: Message, reply: Message, dp: RunConfig, rng: np.random.Generator) -> None:
    """Clip the update to ``C`` and add N(0, (sigma C)^2) to every weight, in place."""
    base = codec.from_record(msg.content.array_records[ARRAYS])
    new = codec.decode(reply.content.array_records[ARRAYS], base)
    delta = {name: new[name].astype(np.float64) - base[name] for name in base}
    private = clip_and_noise(delta, dp.dp_clipping_norm, dp.dp_noise_multiplier, rng)
    noisy = {name: (base[name] + d).astype(np.float32) for name, d in private.items()}
    examples = reply.content.metric_records[METRICS][NUM_EXAMPLES]
    reply.content = RecordDict({ARRAYS: codec.to_record(noisy), METRICS: MetricRecord({NUM_EXAMPLES: examples})})


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


def _record(
    audit: AuditLog,
    msg: Message,
    reply: Message,
    kind: str,
    dp: dict[str, Any] | None,
    secure: dict[str, Any] | None = None,
) -> None:
    # what the hub's receipt binds: this node's Flower id, the type and the instruction replied to
    summary: dict[str, Any] = {
        "message_type": msg.metadata.message_type,
        "run": msg.metadata.run_id,
        "message": msg.metadata.message_id,
        "node": msg.metadata.dst_node_id,
    }
    if secure is not None:
        summary["secure_aggregation"] = secure
    if reply.has_error():
        audit.record_send(
            FLOWER_CHANNEL,
            DESTINATION,
            ERROR,
            reply_body(reply),
            {**summary, "code": int(reply.error.code), "reason": reply.error.reason},
        )
        return
    body, described = describe(reply.content)
    audit.record_send(FLOWER_CHANNEL, DESTINATION, kind, body, {**summary, **described, "dp": dp})
