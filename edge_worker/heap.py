"""A worker's heap once it serves: start-up objects frozen out of the cyclic GC, a roomier young generation.

Measured under wrk (issue 15): each edge worker ran a full (generation 2) collection of
36-51 ms about once a second, walking the start-up heap (the app, the loaded bundles,
onnxruntime's and numpy's modules) and freeing nothing; a request waiting behind it made
the p99. ``gc.freeze()`` moves everything alive at start-up to the permanent generation, so
later collections walk only what requests allocated since, and a larger generation-0
threshold lets a request's short-lived containers die by reference count before a young
collection ever sees (and promotes) them. Figures in docs/benchmarks.md.

Called once per server process from its app factory (``edge_worker.app.create_app_from_env``,
``EdgeSettings.gc_tuning``), never by an app built in someone else's process (a test's, an
embedding application's): freezing is process-wide.
"""

from __future__ import annotations

import gc

#: allocations minus deallocations of GC-tracked objects between young collections (Python's default: 700)
YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Collect what start-up left behind, freeze the rest, and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
