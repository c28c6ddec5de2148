"""Blocking file work (reading input, writing rows) on the event loop while it is quick, on a
worker thread once it is not.

Measured on 2 cores (``benchmarks/overhead.py``, 100,000 rows): reading 1,024 lines and writing
4,096 rows take a few milliseconds each, and handing each of those batches to a worker thread
made the whole run about 20 % slower than doing them on the loop, because the loop and the
thread hand the GIL back and forth. So a batch runs inline, and the first one that takes longer
than :data:`INLINE_IO_BUDGET_S` (a slow disk, a network file system) moves that stream's work to
worker threads for the rest of the run: the loop is held up that long at most once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

__all__ = ["INLINE_IO_BUDGET_S", "Offload", "PinnedOffload"]

INLINE_IO_BUDGET_S = 0.05
"""A batch of file work that takes longer than this moves its stream to worker threads."""

T = TypeVar("T")


class Offload:
    """Runs one stream's blocking batches: inline while each takes under the budget."""

    __slots__ = ("budget_s", "inline")

    def __init__(self, budget_s: float = INLINE_IO_BUDGET_S) -> None:
        self.budget_s = budget_s
        self.inline = True
        """Still on the loop (False once a batch took longer than the budget)."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.inline:
            return await anyio.to_thread.run_sync(fn, *args)
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if time.perf_counter() - started > self.budget_s:
                self.inline = False


class PinnedOffload(Offload):
    """An :class:`Offload` whose batches, once off the loop, always run on one thread of its own.

    For pyarrow readers: pyarrow's allocator (mimalloc) keeps a heap per thread, so reads that
    hop between anyio's worker threads (shared with the writer) each leave one behind. Measured,
    an apply-only run over 1,000,000 Parquet rows: 169 MiB peak RSS with reads on three threads,
    147 on one. :meth:`close` ends the thread."""

    __slots__ = ("_executor",)

    def __init__(self, budget_s: float = INLINE_IO_BUDGET_S) -> None:
        super().__init__(budget_s)
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return await super().run(fn, *args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="chainette-input")
        future = self._executor.submit(fn, *args)
        return await anyio.to_thread.run_sync(future.result)  # waits without running the work

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
