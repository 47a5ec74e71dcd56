"""The kinds of payload a node sends, and the audit channels they go on.

The edge's gateway and the federated audit mod write them into audit entries; the
audit report, the demo and the tests read them back, so every name is defined here once.
"""

from __future__ import annotations

# Sent over HTTP by the edge's egress gateway, which sends no other kind.
MODEL_UPDATE, COUNTERS, HEARTBEAT = "model-update", "counters", "heartbeat"
ENROLLMENT, ASSIGNMENT_POLL, BUNDLE_DOWNLOAD = "enrollment", "assignment-poll", "bundle-download"
GATEWAY_KINDS = (MODEL_UPDATE, COUNTERS, HEARTBEAT, ENROLLMENT, ASSIGNMENT_POLL, BUNDLE_DOWNLOAD)

# Flower replies, recorded by the ClientApp's audit mod (a training reply is a MODEL_UPDATE).
EVALUATION_METRICS, NODE_TAGS = "evaluation-metrics", "node-tags"
#: acknowledges the hub's receipts for earlier replies; gets no receipt of its own
RECEIPT_ACK = "receipt-ack"
ERROR = "error"
# The replies of a SecAgg+ round (federated/secure_aggregation.py), one kind per stage: public
# keys, key shares encrypted to the other nodes, the masked update, the shares that unmask the sum
SECAGG_PUBLIC_KEYS, SECAGG_KEY_SHARES = "secagg-public-keys", "secagg-key-shares"
MASKED_UPDATE, SECAGG_UNMASK_SHARES = "masked-update", "secagg-unmask-shares"
#: not a payload: the kind of the refusal a node's app guard logs for a Flower app the hub did not sign
FLOWER_APP = "flower-app"
#: not a payload: the kind of the refusal a node logs for a hub receipt that does not match its entry
HUB_RECEIPT = "hub-receipt"

# Audit channels: the gateway's counter reports have their own, its other sends share SYNC.
SYNC_CHANNEL, COUNTERS_CHANNEL, FLOWER_CHANNEL = "sync", "counters", "flower"


def gateway_channel(kind: str) -> str:
    """The audit channel of a payload the egress gateway sends."""
    return COUNTERS_CHANNEL if kind == COUNTERS else SYNC_CHANNEL
