"""The ledger work of every record in flight, gathered into one read or one transaction.

Records move through a chain one by one (``runtime/stages.py``), so a step asks the ledger about
one record's requests at a time: a cached rerun of 20,000 records made 20,000 SQLite reads. A
:class:`Gatherer` in front of one kind of ledger call (lookups, claims, puts) gathers what is
pending *at that moment*, the way ``runtime/coalesce.py`` gathers engine requests: the waiter
that finds no call running runs the next one (lets the requests of the same loop turns arrive,
takes the oldest batch, calls), the others wait for the batch they joined. Nothing waits for a
batch to fill: a lone record waits a couple of loop turns, or for the one call already running.

Bounded: a batch takes up to ``limit`` items (keys, entries); the next ones open another. A call
that fails raises its error in every waiter of its batch. A waiter cancelled before its batch is
taken is left out of it; one cancelled while running a call hands the batch back (the next waiter
runs it), so the others still get their results.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

import anyio
import anyio.lowlevel

__all__ = ["GATHER_TICKS", "Gatherer"]

P = TypeVar("P")
R = TypeVar("R")

GATHER_TICKS = 1
"""Loop turns the runner of a call lets pass before taking its batch: the records of a chunk just
read reach the ledger in the same moment."""

LIMIT = 4096
"""Items (keys, entries) in one batch at most."""


@dataclass(eq=False)
class _Entry(Generic[P]):
    payload: P
    size: int


@dataclass(eq=False)
class _Batch(Generic[P]):
    entries: list[_Entry[P]] = field(default_factory=list)
    size: int = 0
    taken: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    result: object = None
    error: BaseException | None = None


class Gatherer(Generic[P, R]):
    """Payloads submitted while a call runs (or in the same loop turns) go to ``call`` together;
    every waiter of a batch gets the call's one result (each picks its own part of it)."""

    def __init__(
        self, call: Callable[[list[P]], Awaitable[R]], *, limit: int = LIMIT, ticks: int = GATHER_TICKS
    ) -> None:
        self._call = call
        self._limit = max(1, limit)
        self._ticks = ticks
        self._queue: deque[_Batch[P]] = deque()
        self._running = False
        self._changed = anyio.Event()
        self.calls = 0
        """Calls made (for tests and benchmarks)."""

    async def submit(self, payload: P, size: int = 1) -> R:
        """The result of the call that took ``payload`` (``size`` items of it count to the bound)."""
        entry = _Entry(payload, size)
        batch = self._queue[-1] if self._queue else None
        if batch is None or (batch.size and batch.size + size > self._limit):
            batch = _Batch()
            self._queue.append(batch)
        batch.entries.append(entry)
        batch.size += size
        try:
            while not batch.done.is_set():
                if not self._running:  # nobody runs the next call: this waiter does
                    await self._run_next()
                else:
                    changed = self._changed
                    await changed.wait()
        finally:
            if not batch.done.is_set() and not batch.taken:  # cancelled before its call: left out
                batch.entries.remove(entry)
                batch.size -= size
                if not batch.entries and batch in self._queue:
                    self._queue.remove(batch)
        if batch.error is not None:
            raise batch.error
        return cast(R, batch.result)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _run_next(self) -> None:
        self._running = True
        batch: _Batch[P] | None = None
        try:
            for _ in range(self._ticks):  # let the requests of this moment arrive
                await anyio.lowlevel.checkpoint()
            if not self._queue:
                return
            batch = self._queue.popleft()
            batch.taken = True
            self.calls += 1
            try:
                batch.result = await self._call([entry.payload for entry in batch.entries])
            except Exception as exc:
                batch.error = exc
            batch.done.set()
        except BaseException:  # cancelled while calling: the batch goes back for the next waiter
            if batch is not None and not batch.done.is_set():
                batch.taken = False
                self._queue.appendleft(batch)
            raise
        finally:
            self._running = False
            self._notify()
