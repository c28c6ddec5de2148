"""Python's cyclic garbage collector during a run.

A run keeps many small objects alive for a short while (records, their histories, the models in
them, the rows waiting to be written) and frees them a chunk at a time. The collector counts
those allocations and runs every 700 of them, each time scanning what is alive; on an apply-only
chain that was 10-15 % of the run (``benchmarks/overhead.py``), although records hold no cycles
and are freed by reference counting. So while a run is in progress the first generation's
threshold is raised and what existed before the run (modules, models, the user's data) is
frozen out of the scans (:func:`gc.freeze`); both are undone when the last run in the process
ends. Cyclic garbage is still collected, only less often. A process that disabled the collector
or froze objects itself is left as it is.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["GEN0_THRESHOLD", "run_collector"]

GEN0_THRESHOLD = 50_000
"""Allocations between first-generation collections during a run (Python's default: 700). Above
what an apply-only run holds between two flushes of the writer (4,096 rows pending, a read ahead,
their records), so the count falls back as those are freed and a collection is rare: at 10,000,
a 200,000-row ``overhead.py`` run made 56 collections (5 of the second generation) that took
0.21 s, 5-6 % of the run; at 50,000, 13 taking 2 ms. Cyclic garbage (a failure's traceback) waits
for at most that many allocations."""

_lock = threading.Lock()
_active = 0
_saved: tuple[tuple[int, int, int], bool] | None = None


@contextmanager
def run_collector() -> Iterator[None]:
    """Tune the collector for the length of a run (nested and concurrent runs: the outermost)."""
    global _active, _saved
    with _lock:
        if _active == 0 and gc.isenabled():
            threshold = gc.get_threshold()
            freeze = gc.get_freeze_count() == 0
            _saved = (threshold, freeze)
            if freeze:
                gc.freeze()
            gc.set_threshold(max(threshold[0], GEN0_THRESHOLD), threshold[1], threshold[2])
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                threshold, freeze = _saved
                _saved = None
                gc.set_threshold(*threshold)
                if freeze:
                    gc.unfreeze()
