"""The ClientApp an edge's SuperNode runs: train on the local store, report held-out metrics.

Every message carries the model spec (featurizer, labels, shape) and the global arrays,
so a node needs nothing but its local store, found through the SuperNode's
``--node-config 'data-dir="..."'``. Each node keeps the same seeded share of its
examples out of training for the evaluate step. The simulation driver builds the same
app over in-memory partitions with :func:`make_client_app`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from edge_worker.store import LocalStore
from federated import codec
from federated.audit_mod import audit_mod
from federated.receipts import receipts_in
from federated.selection import NODE_CONFIG
from federated.strategy import ARRAYS, CONFIG, METRICS
from federated.tasks import Examples, ModelSpec, task_for
from models.errors import NexusError

#: (node config, model spec) -> the node's featurised examples
Loader = Callable[[Mapping[str, Any], ModelSpec], Examples]


def store_examples(node_config: Mapping[str, Any], spec: ModelSpec) -> Examples:
    """The labelled examples in the edge's local store (``node_config["data-dir"]``)."""
    data_dir = node_config.get("data-dir")
    if not data_dir:
        raise NexusError('this SuperNode has no data-dir in its --node-config (start it with data-dir="...")')
    store = LocalStore(str(data_dir))
    try:
        if spec.family == "funnel":
            raw, labels = store.funnel_examples()
        else:
            raw, labels = store.emotion_examples(spec.labels)
    finally:
        store.close()
    if not raw:
        raise NexusError(f"the local store in {data_dir} holds no labelled {spec.family} examples")
    return task_for(spec.family).featurize(spec, raw, labels)


def _round_seed(config: ConfigRecord) -> int:
    # a different minibatch order each round, the same on a re-run of the round
    return int(config["seed"]) * 10_007 + int(config.get("server-round", 0))


def make_client_app(loader: Loader, mods: Sequence[Mod] = ()) -> ClientApp:
    app = ClientApp(mods=list(mods))

    def local_split(context: Context, config: ConfigRecord) -> tuple[Examples, Examples, ModelSpec]:
        spec = ModelSpec.from_json(str(config["model-spec"]))
        data = loader(context.node_config, spec)
        # the split seed is the run's, not the round's: held-out rows are never trained on
        train_idx, test_idx = task_for(spec.family).split(data.labels, int(config["seed"]))
        return data.take(train_idx), data.take(test_idx), spec

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content[CONFIG]
        data, _, spec = local_split(context, config)
        if len(data) == 0:
            raise NexusError("no local training examples")
        task = task_for(spec.family)
        base = codec.from_record(msg.content[ARRAYS])
        lr = float(config["lr"]) or task.default_lr
        out = task.train(
            base, data, int(config["local-epochs"]), _round_seed(config), lr, float(config.get("proximal-mu", 0.0))
        )
        arrays = codec.encode(out.weights, base, out.touched_rows, str(config["compression"]))
        metrics = MetricRecord({"num-examples": len(data), "train-loss": out.loss})
        return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config = msg.content[CONFIG]
        _, held_out, spec = local_split(context, config)
        if len(held_out) == 0:
            raise NexusError("too few local examples to hold any out for evaluation")
        task = task_for(spec.family)
        scores = task.scores(codec.from_record(msg.content[ARRAYS]), held_out)
        metrics = task.metrics(scores, held_out.labels, int(config["seed"]))
        record = MetricRecord({"num-examples": len(held_out), **{k: float(v) for k, v in metrics.items()}})
        return Message(RecordDict({METRICS: record}), reply_to=msg)

    @app.query("receipts")
    def acknowledge_receipts(msg: Message, context: Context) -> Message:
        # the audit mod has attached them to their entries; the count tells the hub they arrived
        return Message(RecordDict({METRICS: MetricRecord({"receipts": len(receipts_in(msg))})}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        # tags only: the data dir is a local path and none of the hub's business
        tags = {
            k: v for k, v in context.node_config.items() if k != "data-dir" and isinstance(v, (str, int, float, bool))
        }
        config = ConfigRecord(tags)
        return Message(RecordDict({NODE_CONFIG: config}), reply_to=msg)

    return app


# every reply is recorded in the node's audit log; updates get DP within its budget
app = make_client_app(store_examples, mods=[audit_mod])
