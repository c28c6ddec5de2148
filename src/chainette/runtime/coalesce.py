"""One engine's requests from every record in flight, gathered into ``generate`` calls.

Records move through a chain one by one (``runtime/stages.py``), so a step sends a record's
request on its own. An engine that takes batches (``max_batch_size > 1``: vLLM, a provider's
batch API, the fake engine) would then get calls of one. The :class:`Coalescer` in front of it
gathers what is pending *at that moment*: a request waits for one of the engine's
``max_concurrency`` call slots, and when a slot frees, every request that arrived meanwhile (up to
``max_batch_size``) goes in that one call. Nothing waits for a batch to fill: with a slot free
and nothing else pending, a request goes alone, at once. Engines that take one request per call
and handle concurrency themselves (the ``openai`` HTTP engine, the embedded engine's continuous
batching) are not coalesced: each request takes its own slot as it comes.

There is no task of its own: the waiter that finds nobody preparing a call prepares the next
(takes a slot, lets the requests of the same moment arrive, takes its batch, hands the role on)
and then runs that call for everyone in it. If that waiter is cancelled (its record's deadline,
its trace), the call is cancelled and the others in it go back to the front of the queue: as
when a sibling's deadline cut a chunk's call, it does not count against them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from ..engines.base import ChatRequest, Completion, Engine

__all__ = ["Coalescer", "coalesces"]

GATHER_TICKS = 2
"""Loop turns a call's preparer lets pass before taking its batch: requests made in the same
moment (the records of a chunk just read) go in one call."""


def coalesces(engine: Engine) -> bool:
    """Whether ``engine`` gets its requests gathered (it takes more than one per call)."""
    return engine.max_batch_size > 1


@dataclass(eq=False)
class _Entry:
    requests: list[ChatRequest]
    done: anyio.Event = field(default_factory=anyio.Event)
    result: list[Completion] | None = None
    error: BaseException | None = None
    taken: bool = False


class Coalescer:
    """Requests to ``engine`` gathered into calls of up to ``max_batch_size``, at most
    ``limiter``'s slots of calls in flight."""

    def __init__(self, engine: Engine, limiter: anyio.CapacityLimiter) -> None:
        self.engine = engine
        self.limiter = limiter
        self.calls = 0
        self._queue: deque[_Entry] = deque()
        self._preparing = False
        self._changed = anyio.Event()

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """The engine's answers to ``requests``, sent in a call with whatever else is pending."""
        entry = _Entry(list(requests))
        self._queue.append(entry)
        try:
            while not entry.done.is_set():
                if not self._preparing and not entry.taken:  # nobody gathers the next call: this one does
                    await self._prepare_and_call()
                else:
                    changed = self._changed
                    await changed.wait()
        finally:
            if not entry.taken and entry in self._queue:
                self._queue.remove(entry)  # cancelled before being sent
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _prepare_and_call(self) -> None:
        self._preparing = True
        try:
            await self.limiter.acquire()
            try:
                for _ in range(GATHER_TICKS):  # let the requests of this moment arrive
                    await anyio.lowlevel.checkpoint()
                if self.engine.gather_s > 0:  # a provider batch: those of the next moments too
                    await anyio.sleep(self.engine.gather_s)
                batch = self._take()
            except BaseException:
                self.limiter.release()
                raise
        finally:
            self._preparing = False
            self._notify()  # the next waiter prepares the next call meanwhile
        try:
            if batch:
                await self._call(batch)
        finally:
            self.limiter.release()
            self._notify()

    def _take(self) -> list[_Entry]:
        size = max(1, self.engine.max_batch_size)
        batch: list[_Entry] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].requests) <= size):
            entry = self._queue.popleft()
            entry.taken = True
            batch.append(entry)
            count += len(entry.requests)
        return batch

    async def _call(self, batch: list[_Entry]) -> None:
        requests = [r for entry in batch for r in entry.requests]
        self.calls += 1
        try:
            completions = await self.engine.generate(requests)
            if len(completions) != len(requests):
                raise RuntimeError(
                    f"engine returned {len(completions)} completions for {len(requests)} requests"
                )
        except Exception as exc:
            for entry in batch:
                entry.error = exc
                entry.done.set()
            return
        except BaseException:  # this waiter was cancelled: the others go round again, first in line
            for entry in reversed(batch):
                if not entry.done.is_set():
                    entry.taken = False
                    self._queue.appendleft(entry)
            raise
        start = 0
        for entry in batch:
            entry.result = completions[start : start + len(entry.requests)]
            start += len(entry.requests)
            entry.done.set()
