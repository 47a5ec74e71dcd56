"""Secure aggregation with Flower's SecAgg+: the node side, and what both sides agree on.

A run with ``secure-aggregation = true`` trains each round in SecAgg+'s four stages, all
``train`` messages: *setup* (the node answers two public keys), *share keys* (shares of its
mask seed and first private key, each encrypted to one other node), *collect masked vectors*
(it trains, and answers its update quantized to integers mod 2**32 plus a private mask and a
pairwise mask per other node, which cancel only in the sum) and *unmask* (the shares that let
the hub remove the masks of the sum, and those of a node that dropped out). The hub's side is
federated/secure_grid.py.

:func:`secure_aggregation_mod` runs inside the audit mod (``mods=[audit_mod,
secure_aggregation_mod]``), so the audit log records what leaves the node: the public keys,
the encrypted shares and the masked vector, never the update itself. It wraps Flower's
``secaggplus_mod`` around the ClientApp's train handler with :func:`_dense_update` in between:
SecAgg+ adds fixed-shape arrays, so the node's reply (possibly sparse int8 embedding deltas,
federated/codec.py) becomes the dense float64 delta from the round's global model, one array
per weight in the global model's order, plus the training loss (dropped under DP). With DP
set, the delta is clipped and noised *before* it is masked (federated/dp.py); the audit mod
charges the budget. The masked reply's plaintext weight (Flower's ``fitres.num_examples``,
which the hub does not need: the weight travels masked inside the vector) is zeroed.

A node refuses an unmasked train instruction in a run that asks for secure aggregation, and a
SecAgg+ stage in one that does not: the run config is what its audit entries say the run was.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from flwr.app import Context, Message, MessageType, MetricRecord
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from federated import codec
from federated.dp import clip_and_noise
from federated.settings import read_run_config
from models.errors import NexusError
from nexus_wire.messages import ARRAYS, METRICS, NUM_EXAMPLES, TRAIN_LOSS
from nexus_wire.payloads import MASKED_UPDATE, SECAGG_KEY_SHARES, SECAGG_PUBLIC_KEYS, SECAGG_UNMASK_SHARES
from nexus_wire.runconfig import RunConfig

#: the audit kind of a node's reply to each stage
STAGE_KINDS = {
    Stage.SETUP: SECAGG_PUBLIC_KEYS,
    Stage.SHARE_KEYS: SECAGG_KEY_SHARES,
    Stage.COLLECT_MASKED_VECTORS: MASKED_UPDATE,
    Stage.UNMASK: SECAGG_UNMASK_SHARES,
}
#: a node's weight in the average is its training examples, capped here: SecAgg+ quantizes
#: ``examples / MAX_WEIGHT`` (at most 1) into the masked vector, so a larger cap costs precision
MAX_WEIGHT = 10_000
#: share of a node's key shares that reconstruct its secrets: the hub together with this many
#: nodes could unmask one node's update; 1 - this share of the nodes may drop out of a round
RECONSTRUCTION_THRESHOLD = 2 / 3
#: the protocol's setup parameters the audit entry of a setup reply records
_SETUP_KEYS = (
    Key.SAMPLE_NUMBER,
    Key.SHARE_NUMBER,
    Key.THRESHOLD,
    Key.CLIPPING_RANGE,
    Key.TARGET_RANGE,
    Key.MOD_RANGE,
    Key.MAX_WEIGHT,
)
_FITRES_WEIGHT = "fitres.num_examples"


def stage_of(msg: Message) -> str | None:
    """The SecAgg+ stage a ServerApp message asks for; None for every other message."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    record = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = record.get(Key.STAGE) if record is not None else None
    return stage if isinstance(stage, str) and stage in STAGE_KINDS else None


def audit_summary(msg: Message) -> dict[str, Any] | None:
    """What the audit entry of the reply says of the protocol (read before the mod consumes the stage)."""
    stage = stage_of(msg)
    if stage is None:
        return None
    summary: dict[str, Any] = {"protocol": "secagg+", "stage": stage}
    if stage == Stage.SETUP:
        record = msg.content.config_records[RECORD_KEY_CONFIGS]
        summary.update({key: record[key] for key in _SETUP_KEYS if key in record})
    return summary


def vector_length(weights: int, settings: RunConfig) -> int:
    """Arrays in a masked vector: SecAgg+'s weight factor, one per weight, the training loss unless under DP."""
    return 1 + weights + (0 if settings.dp_enabled else 1)


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    secure = read_run_config(context.run_config).secure_aggregation
    stage = stage_of(msg)
    if stage is None:
        if secure:
            raise NexusError("this run uses secure aggregation: the node sends no unmasked update")
        return call_next(msg, context)
    if not secure:
        raise NexusError(f"a secure-aggregation stage ({stage}) in a run without secure aggregation")
    reply = secaggplus_mod(msg, context, lambda m, c: _dense_update(m, c, call_next))
    if stage == Stage.COLLECT_MASKED_VECTORS and _FITRES_WEIGHT in reply.content.metric_records:
        reply.content.metric_records[_FITRES_WEIGHT] = MetricRecord({"num_examples": 0})
    return reply


def _dense_update(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The train handler's reply as SecAgg+ takes it: the dense delta from the global model (Flower's FitRes)."""
    reply = call_next(msg, context)
    if reply.has_error():
        raise NexusError(reply.error.reason or "training failed")
    base = codec.from_record(msg.content.array_records[ARRAYS])
    new = codec.decode(reply.content.array_records[ARRAYS], base)
    delta = {name: new[name].astype(np.float64) - base[name] for name in base}
    settings = read_run_config(context.run_config)
    metrics = reply.content.metric_records[METRICS]
    vector = list(_private(delta, settings).values())
    if not settings.dp_enabled:  # the loss is not private: under DP it stays home, as on the plain path
        vector.append(np.array([float(cast(float, metrics[TRAIN_LOSS]))]))
    examples = min(int(cast(int, metrics[NUM_EXAMPLES])), MAX_WEIGHT)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vector), examples, {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def _private(delta: codec.Weights, settings: RunConfig) -> codec.Weights:
    if not settings.dp_enabled:
        return delta
    return clip_and_noise(delta, settings.dp_clipping_norm, settings.dp_noise_multiplier, np.random.default_rng())
