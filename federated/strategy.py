"""Flower strategies with our update decoding, validation and per-round accounting.

Every strategy (FedAvgM, FedAvg, FedProx, FedAdam, FedTrimmedAvg, Krum) is Flower's own class
with :class:`RoundGuard` in front of it: the guard decodes each node's (possibly sparse)
update against the global model of the round, drops and logs malformed or absurd ones,
hands the rest to the aggregator, and records one :class:`RoundRecord` per round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedTrimmedAvg, Krum, Strategy
from flwr.supercore import log

from federated import codec, validation
from federated.receipts import ReceiptBook
from federated.round_outcome import RunFailed, failures, require_trainers
from nexus_wire.messages import ARRAYS, BASELINE_ARRAYS, BASELINE_PREFIX, CONFIG, METRICS, NUM_EXAMPLES, TRAIN_LOSS
from nexus_wire.outcomes import EVALUATE, TRAIN
from nexus_wire.runconfig import RunConfig


@dataclass
class RoundRecord:
    round: int
    started_at: float
    participants: int = 0  # nodes whose update was aggregated
    nodes: list[int] = field(default_factory=list)  # their node ids
    train_failures: int = 0  # nodes asked to train that sent no update (an error reply, or none in time)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"node", "reason"}
    #: every node asked that took no part, per step: {"node", "step", "kind", "reason"} (federated/round_outcome.py)
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: fewer than min-nodes trained: the run ended in this round (nothing aggregated)
    failed: bool = False
    train_loss: float | None = None
    eval_nodes: int = 0
    loss: float | None = None  # weighted by held-out examples
    score: float | None = None  # roc_auc (funnel) or macro_f1 (emotion), weighted likewise
    #: the last round only: the run's base (the stable version) on the same nodes' held-out rows
    baseline_loss: float | None = None
    baseline_score: float | None = None
    bytes_out: int = 0
    bytes_in: int = 0
    update_bytes: list[int] = field(default_factory=list)  # per accepted or rejected update
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric(metrics: MetricRecord, key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None  # type: ignore[arg-type]  # a number: replies are checked


def _arrays_of(content: RecordDict) -> ArrayRecord | None:
    return next(iter(content.array_records.values()), None)


def _sent_bytes(messages: Iterable[Message]) -> int:
    return sum(rec.count_bytes() for m in messages for rec in m.content.array_records.values())


class RoundGuard:
    """Mixin placed before a Flower strategy class in the MRO (see :func:`build_strategy`).

    Its ``super()`` calls reach that strategy, which mypy cannot see in a mixin: hence the
    ``type: ignore[misc]`` on each of them.
    """

    score_name: str = "score"
    max_update_norm: float = validation.MAX_UPDATE_NORM
    on_round: Callable[[RoundRecord], None] = staticmethod(lambda record: None)
    #: signs a receipt per reply and hands them back with the next messages (federated/receipts.py)
    receipts: ReceiptBook | None = None
    #: fewer accepted updates in a round end the run (federated/round_outcome.py)
    min_trainers: int = 1
    #: the base's arrays, evaluated beside the candidate in round ``last_round`` (the promotion gate)
    baseline: ArrayRecord | None = None
    last_round: int = 0
    _global: codec.Weights
    _record: RoundRecord
    _asked: list[int]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._record = RoundRecord(server_round, time.time())
        self._global = codec.from_record(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._asked = [m.metadata.dst_node_id for m in messages]
        self._record.bytes_out += _sent_bytes(messages)
        return self._with_receipts(messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._sign(replies)  # before decoding rewrites the content
        record = self._record
        record.failures = failures(TRAIN, self._asked, replies)
        record.train_failures = len(record.failures)
        decoded: list[tuple[Message, codec.Weights]] = []
        for msg in (m for m in replies if not m.has_error()):
            arrays = _arrays_of(msg.content)
            size = arrays.count_bytes() if arrays is not None else 0
            record.bytes_in += size
            record.update_bytes.append(size)
            try:
                if arrays is None:
                    raise codec.UpdateError("reply carries no arrays")
                decoded.append((msg, codec.decode(arrays, self._global)))
            except codec.UpdateError as exc:
                self._reject(msg, str(exc))
        accepted: list[Message] = []
        for (msg, weights), verdict in zip(
            decoded, validation.judge([w for _, w in decoded], self._global, self.max_update_norm)
        ):
            if verdict.reason is not None:
                self._reject(msg, verdict.reason)
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            msg.content = RecordDict({ARRAYS: codec.to_record(weights), METRICS: metrics})
            accepted.append(msg)
        record.participants = len(accepted)
        record.nodes = sorted(m.metadata.src_node_id for m in accepted)
        try:
            require_trainers(
                server_round, len(accepted), len(self._asked), self.min_trainers, record.failures, len(record.rejected)
            )
        except RunFailed:
            record.failed = True
            record.duration_s = round(time.time() - record.started_at, 3)
            self.on_round(record)
            raise
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        if metrics is not None and TRAIN_LOSS in metrics:
            record.train_loss = float(metrics[TRAIN_LOSS])
        return arrays, metrics

    def _reject(self, msg: Message, reason: str) -> None:
        node = msg.metadata.src_node_id
        log(WARNING, "round %d: rejected the update of node %s: %s", self._record.round, node, reason)
        self._record.rejected.append({"node": node, "reason": reason})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        self._asked = [m.metadata.dst_node_id for m in messages]
        if server_round == self.last_round and self.baseline is not None:
            for msg in messages:  # one content object for all: each gets its own, with the baseline
                msg.content = RecordDict({**msg.content, BASELINE_ARRAYS: self.baseline})
        self._record.bytes_out += _sent_bytes(messages)
        return self._with_receipts(messages)

    def _with_receipts(self, messages: list[Message]) -> list[Message]:
        return messages if self.receipts is None else self.receipts.attach(messages)

    def _sign(self, replies: list[Message]) -> None:
        if self.receipts is not None:
            self.receipts.take(replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self._sign(replies)
        metrics = super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]
        record = self._record
        record.eval_nodes = sum(1 for m in replies if not m.has_error())
        record.failures += failures(EVALUATE, self._asked, replies)
        if metrics is not None:
            record.loss = _metric(metrics, "loss")
            record.score = _metric(metrics, self.score_name)
            record.baseline_loss = _metric(metrics, BASELINE_PREFIX + "loss")
            record.baseline_score = _metric(metrics, BASELINE_PREFIX + self.score_name)
        record.duration_s = round(time.time() - record.started_at, 3)
        log(
            INFO,
            "round %d: %d participants, loss %s, %s %s, %.1fs",
            server_round,
            record.participants,
            record.loss,
            self.score_name,
            record.score,
            record.duration_s,
        )
        self.on_round(record)
        return metrics


#: Flower's class of each name in ``nexus_wire.runconfig.STRATEGIES`` (a test holds them equal)
STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "fedavgm": FedAvgM,
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


def build_strategy(
    settings: RunConfig,
    score_name: str,
    on_round: Callable[[RoundRecord], None],
    receipts: ReceiptBook | None = None,
    baseline: ArrayRecord | None = None,
) -> Strategy:
    """Flower's strategy of ``settings`` behind :class:`RoundGuard`; with ``baseline`` (the run's base),
    the last round evaluates it beside the candidate (the hub's promotion gate)."""
    base = STRATEGY_CLASSES[settings.strategy]
    kwargs: dict[str, Any] = {
        # Flower's defaults, named where the ClientApp reads them (nexus_wire/messages.py)
        "arrayrecord_key": ARRAYS,
        "configrecord_key": CONFIG,
        "weighted_by_key": NUM_EXAMPLES,
        "fraction_train": settings.fraction,
        "fraction_evaluate": settings.fraction,
        "min_train_nodes": settings.min_nodes,
        "min_evaluate_nodes": settings.min_nodes,
        "min_available_nodes": settings.min_nodes,
    }
    if settings.strategy == "fedprox":
        kwargs["proximal_mu"] = settings.proximal_mu
    if settings.strategy == "fedavgm":
        kwargs["server_momentum"] = settings.server_momentum
    if settings.strategy == "krum":
        # Krum needs n > 2f + 2 to pick a reliable update; assume one bad node when affordable
        kwargs["num_malicious_nodes"] = 1 if settings.min_nodes >= 4 else 0
    strategy = type(f"Guarded{base.__name__}", (RoundGuard, base), {})(**kwargs)
    strategy.score_name = score_name
    strategy.max_update_norm = settings.max_update_norm
    strategy.on_round = on_round
    strategy.receipts = receipts
    strategy.min_trainers = settings.min_nodes
    strategy.last_round = settings.rounds
    strategy.baseline = baseline
    return strategy
