"""Id and name patterns shared by every process that sends or checks them.

Each is a plain, unanchored regular expression: a pydantic field takes ``anchored(X)``, a
check in code takes ``fullmatch(X, value)``. The charsets leave out ":", "/", "$" and
whitespace, so a value can be a part of a store key, a URL path or a counter key as it is.
"""

from __future__ import annotations

import re

#: a model family's registry name (``funnel``, ``emotion``): a URL path segment and a folder name
MODEL_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
#: a model version: a positive decimal number, compared numerically
VERSION = r"[0-9]{1,9}"
#: ids of the funnel config (funnels, steps, experiments, variants, salts) and node ids
CONFIG_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
#: a node's id as the hub assigns it at enrollment (hub/api/nodes.py): "n-" and 16 hex digits
NODE_ID = r"n-[0-9a-f]{16}"
#: an enrollment token as the hub hands it out (``nx_`` and URL-safe base64)
TOKEN = r"[A-Za-z0-9_-]{16,128}"
#: a file name inside a model bundle
FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
#: a node tag (``region=3``), selected on by rollouts and federated runs
TAG_KEY = r"[a-z][a-z0-9_.-]{0,31}"
TAG_VALUE = r"[A-Za-z0-9_.-]{1,64}"
#: a site's visitor id, as the edge's funnel and erasure routes take it
VISITOR_ID = r"[A-Za-z0-9._:@-]{1,128}"


def anchored(pattern: str) -> str:
    """``pattern`` matching whole values only (pydantic and JSON Schema search otherwise)."""
    return f"^{pattern}$"


def fullmatch(pattern: str, value: object) -> bool:
    """Whether ``value`` is a string that ``pattern`` matches as a whole."""
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None
