"""The variant assignment every client reproduces (docs/funnels.md, "Assignment").

The hub names the algorithm in its funnel config document and an edge refuses a config
naming another; edges compute it (edge_worker/assignment.py), and so may a page or a CRM
from the spec and its test vectors. The constants here are the spec's: changing any of
them is a new algorithm under a new name.
"""

from __future__ import annotations

#: the algorithm's name in the config document's ``assignment`` member
ALGORITHM = "sha256-u53/1"
#: joins experiment id, salt and visitor id into the hashed string; config ids and salts
#: cannot contain it, so the string is unambiguous even when a visitor id does
SEPARATOR = ":"
#: the top bits of the SHA-256 digest that make ``u``: exact in an IEEE double (a JS Number)
U_BITS = 53

# The step an edge counts once per visitor when it first assigns them (the denominator of
# every conversion rate). "$" is outside the config id charset, so it never clashes with a step.
ASSIGNED = "$assigned"
