"""The node's privacy evidence: the tamper-evident audit log of everything that leaves it
(log.py, on the RFC 6962 math of nexus_wire/merkle.py and the stored subtrees of tree.py),
its verification (verify.py), the DP budget (dp_budget.py) and the officer's report
(report.py) and CLI (cli.py).

This package's names below are the edge's public audit interface: ``federated`` (the
ClientApp's audit mod) uses these and nothing else of it.
"""

from edge_worker.audit.dp_budget import BudgetExhausted, PrivacyBudget
from edge_worker.audit.log import (
    ERASURE,
    HUB_KEY,
    REFUSAL,
    RETENTION,
    SEND,
    AuditError,
    AuditLog,
    AuditReader,
    ConsistencyProof,
    Entry,
    InclusionProof,
    TreeHead,
    load_tree_head,
)
from edge_worker.audit.verify import Verification, verify

__all__ = [
    "ERASURE",
    "HUB_KEY",
    "REFUSAL",
    "RETENTION",
    "SEND",
    "AuditError",
    "AuditLog",
    "AuditReader",
    "BudgetExhausted",
    "ConsistencyProof",
    "Entry",
    "InclusionProof",
    "PrivacyBudget",
    "TreeHead",
    "Verification",
    "load_tree_head",
    "verify",
]
