"""The ClientApp an edge's SuperNode runs: train on the local store, report held-out metrics.

Every message carries the model spec (featurizer, labels, shape) and the global arrays,
so a node needs nothing but its local store, found through the SuperNode's
``--node-config 'data-dir="..."'``. Each node keeps the same seeded share of its
examples out of training for the evaluate step. The simulation driver builds the same
app over in-memory partitions with :func:`make_client_app`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from edge_worker.store import LocalStore
from federated import codec
from federated.audit_mod import audit_mod
from federated.failures import NoLocalData
from federated.receipts import receipts_in
from federated.secure_aggregation import secure_aggregation_mod
from models.errors import NexusError
from models.families import FAMILIES, Families
from models.task import Examples, ModelSpec
from nexus_wire.datadir import NODE_CONFIG_DATA_DIR, NODE_CONFIG_NEXUS_NODE, EdgeDataDir
from nexus_wire.messages import (
    ARRAYS,
    BASELINE_ARRAYS,
    BASELINE_PREFIX,
    CONFIG,
    METRICS,
    NODE_CONFIG,
    NUM_EXAMPLES,
    RECEIPTS_ACTION,
    TRAIN_LOSS,
    EvaluateInstruction,
    TrainInstruction,
)
from nexus_wire.names import NODE_ID, fullmatch

#: (node config, model spec) -> the node's featurised examples
Loader = Callable[[Mapping[str, Any], ModelSpec], Examples]


def store_examples(node_config: Mapping[str, Any], spec: ModelSpec, families: Families = FAMILIES) -> Examples:
    """The labelled examples in the edge's local store (``node_config["data-dir"]``)."""
    task = families.get(spec.family).task
    layout = EdgeDataDir.from_node_config(node_config)
    if layout is None:
        raise NexusError('this SuperNode has no data-dir in its --node-config (start it with data-dir="...")')
    store = LocalStore(layout.store)
    try:
        raw, labels = task.local_examples(store, spec)
    finally:
        store.close()
    if not raw:
        # no path: the reason goes to the hub (federated/failures.py)
        raise NoLocalData(f"the local store holds no labelled {spec.family} examples")
    return task.featurize(spec, raw, labels)


Instruction = TypeVar("Instruction", TrainInstruction, EvaluateInstruction)


def _instruction(kind: type[Instruction], msg: Message) -> Instruction:
    """The instruction in the message's config record; a bad one is a one-line NexusError."""
    try:
        return kind.from_config(msg.content.config_records[CONFIG])
    except ValueError as exc:
        raise NexusError(str(exc)) from None


def _round_seed(instruction: TrainInstruction) -> int:
    # a different minibatch order each round, the same on a re-run of the round
    return instruction.seed * 10_007 + instruction.server_round


def make_client_app(loader: Loader, mods: Sequence[Mod] = (), families: Families = FAMILIES) -> ClientApp:
    app = ClientApp(mods=list(mods))

    def local_split(
        context: Context, instruction: TrainInstruction | EvaluateInstruction
    ) -> tuple[Examples, Examples, ModelSpec]:
        spec = ModelSpec.from_json(instruction.model_spec)
        data = loader(context.node_config, spec)
        # the split seed is the run's, not the round's: held-out rows are never trained on
        train_idx, test_idx = families.get(spec.family).task.split(data.labels, instruction.seed)
        return data.take(train_idx), data.take(test_idx), spec

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        instruction = _instruction(TrainInstruction, msg)
        data, _, spec = local_split(context, instruction)
        if len(data) == 0:
            raise NoLocalData("no local training examples")
        task = families.get(spec.family).task
        base = codec.from_record(msg.content.array_records[ARRAYS])
        # 0 in the run config: the family's defaults
        lr, epochs = instruction.lr or task.federated_lr, instruction.local_epochs or task.federated_local_epochs
        out = task.train(base, data, epochs, _round_seed(instruction), lr, instruction.proximal_mu)
        arrays = codec.encode(out.weights, base, out.touched_rows, instruction.compression)
        metrics = MetricRecord({NUM_EXAMPLES: len(data), TRAIN_LOSS: out.loss})
        return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        instruction = _instruction(EvaluateInstruction, msg)
        _, held_out, spec = local_split(context, instruction)
        if len(held_out) == 0:
            raise NoLocalData("too few local examples to hold any out for evaluation")
        task = families.get(spec.family).task

        def measured(arrays: ArrayRecord, prefix: str = "") -> dict[str, float]:
            scores = task.scores(codec.from_record(arrays), held_out)
            return {prefix + k: float(v) for k, v in task.metrics(scores, held_out.labels, instruction.seed).items()}

        metrics = measured(msg.content.array_records[ARRAYS])
        if BASELINE_ARRAYS in msg.content.array_records:  # the promotion gate: the stable version on the same rows
            metrics.update(measured(msg.content.array_records[BASELINE_ARRAYS], BASELINE_PREFIX))
        record = MetricRecord({NUM_EXAMPLES: len(held_out), **metrics})
        return Message(RecordDict({METRICS: record}), reply_to=msg)

    @app.query(RECEIPTS_ACTION)
    def acknowledge_receipts(msg: Message, context: Context) -> Message:
        # the audit mod has attached them to their entries; the count tells the hub they arrived
        return Message(RecordDict({METRICS: MetricRecord({"receipts": len(receipts_in(msg))})}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        # tags and the hub-assigned node id only: the data dir is a local path and none of the hub's business
        tags: dict[str, ConfigRecordValues] = {
            k: v
            for k, v in context.node_config.items()
            if k != NODE_CONFIG_DATA_DIR and isinstance(v, (str, int, float, bool))
        }
        if not fullmatch(NODE_ID, tags.get(NODE_CONFIG_NEXUS_NODE)):
            tags.pop(NODE_CONFIG_NEXUS_NODE, None)  # not an id the hub assigned: the hub uses Flower's
        config = ConfigRecord(tags)
        return Message(RecordDict({NODE_CONFIG: config}), reply_to=msg)

    return app


# every reply is recorded in the node's audit log; updates get DP within its budget. The
# SecAgg+ mod runs inside the audit mod, so the log records what leaves: the masked update
app = make_client_app(store_examples, mods=[audit_mod, secure_aggregation_mod])
