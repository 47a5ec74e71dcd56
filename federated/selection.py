"""Node selection by tag (``region=1,2``): ask every node for its node config, keep the matches.

Flower's ``grid.get_nodes()`` carries no node config, so the ServerApp sends each online
node a ``query`` message (answered by the ClientApp with its ``node_config``) and hands
the strategy a :class:`SelectedGrid` that only lists the matching nodes. The same replies
carry each node's hub-assigned id (``nexus-node``), so the query goes out on every run, with
or without a selection: the run names its participants by those ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from federated.delegating_grid import DelegatingGrid
from federated.receipts import ReceiptBook
from federated.settings import parse_select
from nexus_wire.datadir import NODE_CONFIG_NEXUS_NODE
from nexus_wire.messages import NODE_CONFIG
from nexus_wire.names import NODE_ID, fullmatch


class SelectedGrid(DelegatingGrid):
    """A Grid that shows the strategy only ``node_ids``; everything else goes to ``inner``."""

    def __init__(self, inner: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(inner)
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)


def node_configs(grid: Grid, timeout: float, receipts: ReceiptBook | None = None) -> dict[int, dict[str, str]]:
    """node id -> its node config (values as strings), for the nodes that answered in time.
    With ``receipts``, every reply gets a signed receipt like a round's (federated/receipts.py)."""
    queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in grid.get_node_ids()]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    if receipts is not None:
        receipts.take(replies)
    out: dict[int, dict[str, str]] = {}
    for reply in replies:
        if reply.has_error():
            log(
                WARNING,
                "node %s did not answer the node-config query: %s",
                reply.metadata.src_node_id,
                reply.error.reason,
            )
            continue
        config = reply.content.config_records.get(NODE_CONFIG, ConfigRecord())
        out[reply.metadata.src_node_id] = {k: str(v) for k, v in config.items()}
    return out


def nexus_names(configs: dict[int, dict[str, str]]) -> dict[int, str]:
    """Flower node id -> the hub-assigned id (``n-...``) each node's config names, where it names a valid one."""
    return {
        node: config[NODE_CONFIG_NEXUS_NODE]
        for node, config in configs.items()
        if fullmatch(NODE_ID, config.get(NODE_CONFIG_NEXUS_NODE))
    }


def select_nodes(
    grid: Grid, select: str, timeout: float, receipts: ReceiptBook | None = None
) -> tuple[Grid, dict[int, str]]:
    """``grid`` itself without a selection, else a :class:`SelectedGrid` of the matching nodes;
    with the hub-assigned id of every node that answered with one (:func:`nexus_names`)."""
    tags = parse_select(select)
    configs = node_configs(grid, timeout, receipts)
    names = nexus_names(configs)
    if not tags:
        return grid, names
    chosen = sorted(
        node for node, config in configs.items() if all(config.get(k) in allowed for k, allowed in tags.items())
    )
    log(INFO, "selection %r: nodes %s of %d online", select, chosen, len(configs))
    return SelectedGrid(grid, chosen), names
