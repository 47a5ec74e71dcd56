"""Secure aggregation, the hub's side: a round's train step as Flower's ``SecAggPlusWorkflow``.

:class:`SecureGrid` stands in front of the ServerApp's grid. The strategy's train messages
(one per sampled node: the global arrays, the instruction, the node's receipts) never go out
as they are: the grid runs SecAgg+'s four stages with them (the third stage carries exactly
those contents) and hands the strategy, for each node whose masked vector went into the sum,
a reply holding the *average* update applied to the global model (the same arrays for every
such node, each of weight 1, so any averaging strategy returns them unchanged), and an error
reply naming the stage and reason for each node that dropped out. The hub never holds a
single node's update: only the dequantized sum, divided by the masked total weight.

Flower's workflow is written for its legacy strategies: it is driven here through a
``LegacyContext`` whose strategy only collects the unmasked average. Every stage's replies
get the hub's receipts (federated/receipts.py) before the workflow reads them, and a
malformed reply is dropped, as a node that went away would be, instead of failing the round.
A round that cannot finish (fewer nodes left than the reconstruction threshold) answers
every node with an error reply, so the strategy aggregates nothing.

Quantization (chosen per round here, sent to the nodes in the setup stage): each weight of
``examples / MAX_WEIGHT * delta`` is clipped to the clipping range (8, or wider under DP) and
stochastically rounded to ``quantization_range`` levels, ``min(2**24, 2**32 // nodes)`` so
the sum cannot wrap around the 2**32 modulus. The average then carries an error of about
``sqrt(nodes) * range / levels / total weight`` per weight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore import log

from federated import codec
from federated.digest import reply_body
from federated.receipts import ReceiptBook
from federated.secure_aggregation import MAX_WEIGHT, RECONSTRUCTION_THRESHOLD, stage_of, vector_length
from federated.selection import SelectedGrid
from federated.strategy import RoundRecord
from nexus_wire.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, TRAIN_LOSS
from nexus_wire.runconfig import RunConfig

#: Flower's default; values are scaled by examples / MAX_WEIGHT (at most 1) before clipping
CLIPPING_RANGE = 8.0
MODULUS = 2**32


def clipping_range(settings: RunConfig) -> float:
    """Wide enough for a clipped update plus its noise (6 sigma) under DP."""
    if not settings.dp_enabled:
        return CLIPPING_RANGE
    return max(CLIPPING_RANGE, settings.dp_clipping_norm * (1 + 6 * settings.dp_noise_multiplier))


def quantization_range(nodes: int) -> int:
    """Levels per weight such that the sum of ``nodes`` quantized vectors stays below the modulus."""
    return min(2**24, (MODULUS - 1) // max(nodes, 1))


@dataclass
class SecureRound:
    """What one secure round did, for the run summary (nodes by Flower id)."""

    round: int
    sampled: list[int]
    threshold_share: float
    summed: list[int] = field(default_factory=list)  # nodes whose masked vector is in the sum
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {"node", "stage", "reason"}
    stage_s: dict[str, float] = field(default_factory=dict)
    bytes_in: int = 0  # every stage's replies, as the receipts hash them
    masked_bytes: list[int] = field(default_factory=list)  # per masked vector in the sum
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _StageGrid(SelectedGrid):
    """The grid the workflow talks to: signs receipts for, checks and records every stage's replies."""

    def __init__(self, inner: Grid, receipts: ReceiptBook | None, shapes: list[tuple[int, ...]], record: SecureRound):
        super().__init__(inner, record.sampled)
        self.receipts, self.shapes, self.record = receipts, shapes, record
        self.reasons: dict[int, tuple[str, str]] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stage = next((s for s in map(stage_of, messages) if s is not None), "?")
        started = time.monotonic()
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self.record.stage_s[stage] = round(time.monotonic() - started, 3)
        if self.receipts is not None:
            self.receipts.take(replies)  # before the workflow reads (and a check drops) any of them
        answered = {r.metadata.src_node_id for r in replies}
        for msg in messages:
            if msg.metadata.dst_node_id not in answered:
                self.reasons[msg.metadata.dst_node_id] = (stage, f"no reply within {timeout:g} s")
        kept = []
        for reply in replies:
            node = reply.metadata.src_node_id
            self.record.bytes_in += len(reply_body(reply))
            problem = (reply.error.reason or "error") if reply.has_error() else _malformed(stage, reply, self.shapes)
            if problem is not None:
                self.reasons[node] = (stage, problem)
                if not reply.has_error():
                    log(WARNING, "secure aggregation: dropped node %s at stage %s: %s", node, stage, problem)
                    continue  # as if it never answered: the protocol goes on without it
            elif stage == Stage.COLLECT_MASKED_VECTORS:
                self.record.masked_bytes.append(len(reply_body(reply)))
            kept.append(reply)
        return kept


def _malformed(stage: str, reply: Message, shapes: list[tuple[int, ...]]) -> str | None:
    """Why a stage's reply would break the workflow, or None: keys, types and the vector's shapes."""
    record = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if record is None:
        return f"no {RECORD_KEY_CONFIGS} record"
    expected = {
        Stage.SETUP: ((Key.PUBLIC_KEY_1, bytes, False), (Key.PUBLIC_KEY_2, bytes, False)),
        Stage.SHARE_KEYS: ((Key.DESTINATION_LIST, int, True), (Key.CIPHERTEXT_LIST, bytes, True)),
        Stage.COLLECT_MASKED_VECTORS: ((Key.MASKED_PARAMETERS, bytes, True),),
        Stage.UNMASK: ((Key.NODE_ID_LIST, int, True), (Key.SHARE_LIST, bytes, True)),
    }.get(stage, ())
    lengths = set()
    for key, kind, is_list in expected:
        value = record.get(key)
        values = value if is_list and isinstance(value, list) else [value]
        if not all(type(v) is kind for v in values):  # bool is an int, and no stage takes one
            return f"{key} is not {'a list of ' if is_list else ''}{kind.__name__}"
        lengths.add(len(values))
    if len(lengths) > 1:
        return "lists of different lengths"
    if stage != Stage.COLLECT_MASKED_VECTORS:
        return None
    try:
        compat.recorddict_to_fitres(reply.content, keep_input=True)
        arrays = [bytes_to_ndarray(b) for b in cast(list[bytes], record[Key.MASKED_PARAMETERS])]
    except Exception as exc:  # the node's fault, not the round's
        return f"undecodable masked vector ({type(exc).__name__})"
    if [a.shape for a in arrays] != shapes or any(a.dtype.kind not in "iu" for a in arrays):
        return "masked vector of the wrong shapes or dtype"
    return None


class _Workflow(SecAggPlusWorkflow):
    """SecAgg+ whose masked-vector stage carries the strategy's own train message content."""

    def __init__(self, contents: dict[int, RecordDict], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.contents = contents

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        proceed = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {nid: RecordDict(dict(self.contents[nid])) for nid in state.nid_to_fitins}
        return proceed


class _Collector(Strategy):
    """The legacy strategy the workflow calls: it names the nodes and keeps the unmasked average."""

    def __init__(self, proxies: list[ClientProxy]) -> None:
        self.proxies = proxies
        self.average: list[np.ndarray] | None = None
        self.summed: list[int] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, FitIns(Parameters([], ""), {})) for proxy in self.proxies]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Any
    ) -> tuple[Parameters | None, dict[str, Any]]:
        # every result carries the same parameters: the unmasked weighted average
        self.summed = sorted(proxy.node_id for proxy, _ in results)
        self.average = parameters_to_ndarrays(results[0][1].parameters) if results else None
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: Any) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict] | None:
        return None


class SecureGrid(SelectedGrid):
    """The ServerApp's grid with every train step run as a SecAgg+ round (see the module docstring)."""

    def __init__(self, inner: Grid, settings: RunConfig, receipts: ReceiptBook | None = None) -> None:
        super().__init__(inner, ())
        self.settings, self.receipts = settings, receipts
        self.rounds: dict[int, SecureRound] = {}

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages or any(
            m.metadata.message_type != MessageType.TRAIN or ARRAYS not in m.content.array_records for m in messages
        ):
            return self.inner.send_and_receive(messages, timeout=timeout)
        return self._secure_round(messages, timeout)

    def _secure_round(self, messages: list[Message], timeout: float | None) -> list[Message]:
        server_round = int(cast(int, messages[0].content.config_records[CONFIG].get("server-round", 0)))
        base = codec.from_record(messages[0].content.array_records[ARRAYS])
        shapes: list[tuple[int, ...]] = [(1,), *(w.shape for w in base.values())]
        shapes += [(1,)] * (vector_length(len(base), self.settings) - len(shapes))
        by_node = {m.metadata.dst_node_id: m for m in messages}
        record = SecureRound(server_round, sorted(by_node), RECONSTRUCTION_THRESHOLD)
        self.rounds[server_round] = record
        grid = _StageGrid(self.inner, self.receipts, shapes, record)
        collector = _Collector([GridClientProxy(node, grid, 0) for node in by_node])
        context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=collector)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        workflow = _Workflow(
            {node: m.content for node, m in by_node.items()},
            num_shares=1.0,  # every node holds a share of every other's secrets (SecAgg+ with all neighbours)
            reconstruction_threshold=RECONSTRUCTION_THRESHOLD,
            max_weight=float(MAX_WEIGHT),
            clipping_range=clipping_range(self.settings),
            quantization_range=quantization_range(len(by_node)),
            modulus_range=MODULUS,
            timeout=timeout,
        )
        try:
            workflow(grid, context)
        except Exception as exc:  # a reply that passed the checks and still broke the protocol
            log(WARNING, "round %d: secure aggregation failed: %r", server_round, exc)
            record.error = f"secure aggregation failed ({type(exc).__name__})"
        average = self._average(collector, base, record)
        record.summed = collector.summed if average is not None else []
        record.dropped = [
            {"node": node, "stage": stage, "reason": reason}
            for node, (stage, reason) in sorted(grid.reasons.items())
            if node not in record.summed
        ]
        log(
            INFO,
            "round %d: secure aggregation of %d of %d nodes, %d dropped",
            server_round,
            len(record.summed),
            len(by_node),
            len(record.dropped),
        )
        return [self._reply(by_node[node], average, record, grid) for node in sorted(by_node)]

    def _average(
        self, collector: _Collector, base: codec.Weights, record: SecureRound
    ) -> tuple[codec.Weights, float | None] | None:
        """The global model plus the unmasked average delta, and the average training loss."""
        vector = collector.average
        if vector is None:
            record.error = record.error or "secure aggregation halted: fewer nodes left than the threshold"
            return None
        names = list(base)
        if [v.shape for v in vector[: len(names)]] != [base[n].shape for n in names]:
            record.error = "secure aggregation returned arrays of the wrong shapes"
            return None
        weights = {n: (base[n] + v).astype(np.float32) for n, v in zip(names, vector)}
        loss = float(vector[len(names)][0]) if len(vector) > len(names) else None
        return weights, loss

    def _reply(
        self,
        train: Message,
        average: tuple[codec.Weights, float | None] | None,
        record: SecureRound,
        grid: _StageGrid,
    ) -> Message:
        node = train.metadata.dst_node_id
        # answers a message that never went out (its content did, in the masked-vector stage): no receipt
        if average is None or node not in record.summed:
            stage, reason = grid.reasons.get(node, ("?", record.error or "not in the sum"))
            return Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"secure aggregation, stage {stage}: {reason}"),
                reply_to=train,
            )
        weights, loss = average
        metrics = MetricRecord({NUM_EXAMPLES: 1, **({TRAIN_LOSS: loss} if loss is not None else {})})
        return Message(RecordDict({ARRAYS: codec.to_record(weights), METRICS: metrics}), reply_to=train)

    def amend(self, r: RoundRecord, name: Callable[[int], str]) -> dict[str, Any]:
        """Correct the round's record to what the hub received (protocol replies, not one update per
        node) and say what its secure aggregation did, for the run summary (nodes by ``name``)."""
        record = self.rounds.get(r.round)
        if record is None:
            return {}
        r.bytes_in, r.update_bytes = record.bytes_in, list(record.masked_bytes)
        view = record.to_dict()
        view["sampled"] = sorted(name(n) for n in record.sampled)
        view["summed"] = sorted(name(n) for n in record.summed)
        view["dropped"] = [{**d, "node": name(d["node"])} for d in record.dropped]
        return {"secure_aggregation": view}
