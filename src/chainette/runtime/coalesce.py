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

The waiter that finds nobody preparing a call prepares the next (takes a slot, lets the requests
of the same moment arrive, takes its batch, hands the role on) and starts that call in a task of
its own (in the engine broker's task group, for as long as the run): the call belongs to every
record in it, not to the waiter that started it. A record cancelled meanwhile (its deadline, its
trace) stops waiting; the call goes on for the others, so their requests are sent once, and it is
cancelled only when every record in it has stopped waiting. Where no broker task group is there
(a Ray worker), the waiter runs the call itself and, if cancelled, the others in it go back to the
front of the queue. Each record's ``on_sent`` is called as its call starts: a step's ``timeout_s``
counts from there, not from the wait for a slot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

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


Spawn = Callable[[Callable[["_Call"], Coroutine[Any, Any, None]], "_Call"], bool]
"""Starts ``fn(call)`` in a task that lives as long as the run; False when it cannot."""


@dataclass(eq=False)
class _Entry:
    requests: list[ChatRequest]
    on_sent: Callable[[], None] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: list[Completion] | None = None
    error: BaseException | None = None
    taken: bool = False
    abandoned: bool = False
    """Its waiter was cancelled: nobody reads its answers."""
    call: _Call | None = None


@dataclass(eq=False)
class _Call:
    entries: list[_Entry]
    token: object = field(default_factory=object)
    """Holds the limiter's slot for the call, whichever task ends it."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class Coalescer:
    """Requests to ``engine`` gathered into calls of up to ``max_batch_size``, at most
    ``limiter``'s slots of calls in flight."""

    def __init__(self, engine: Engine, limiter: anyio.CapacityLimiter, spawn: Spawn | None = None) -> None:
        self.engine = engine
        self.limiter = limiter
        self._spawn = spawn
        self.calls = 0
        self._queue: deque[_Entry] = deque()
        self._preparing = False
        self._changed = anyio.Event()

    async def generate(
        self, requests: Sequence[ChatRequest], on_sent: Callable[[], None] | None = None
    ) -> list[Completion]:
        """The engine's answers to ``requests``, sent in a call with whatever else is pending
        (``on_sent()`` is called as that call starts)."""
        entry = _Entry(list(requests), on_sent)
        self._queue.append(entry)
        try:
            while not entry.done.is_set():
                if not self._preparing and not entry.taken:  # nobody gathers the next call: this one does
                    await self._prepare_and_call()
                else:
                    changed = self._changed
                    await changed.wait()
        finally:
            if not entry.done.is_set():  # cancelled
                entry.abandoned = True
                if not entry.taken and entry in self._queue:
                    self._queue.remove(entry)  # before being sent
                call = entry.call
                if call is not None and all(e.abandoned for e in call.entries):
                    call.scope.cancel()  # nobody waits for its answers any more
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _prepare_and_call(self) -> None:
        self._preparing = True
        call = _Call([])
        try:
            await self.limiter.acquire_on_behalf_of(call.token)
            try:
                for _ in range(GATHER_TICKS):  # let the requests of this moment arrive
                    await anyio.lowlevel.checkpoint()
                if self.engine.gather_s > 0:  # a provider batch: those of the next moments too
                    await anyio.sleep(self.engine.gather_s)
                call.entries = self._take()
            except BaseException:
                self.limiter.release_on_behalf_of(call.token)
                raise
        finally:
            self._preparing = False
            self._notify()  # the next waiter prepares the next call meanwhile
        for entry in call.entries:
            entry.call = call
            if entry.on_sent is not None:
                entry.on_sent()
        if not (call.entries and self._spawn is not None and self._spawn(self._run, call)):
            await self._run(call)  # no task to start it in (or nothing to send): this waiter runs it

    async def _run(self, call: _Call) -> None:
        try:
            if call.entries:
                with call.scope:
                    await self._call(call.entries)
        finally:
            self.limiter.release_on_behalf_of(call.token)
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
        except BaseException:  # cancelled (the waiter running it, or the run): the others go round again
            for entry in reversed(batch):
                if not entry.done.is_set() and not entry.abandoned:
                    entry.taken = False
                    self._queue.appendleft(entry)
            raise
        start = 0
        for entry in batch:
            entry.result = completions[start : start + len(entry.requests)]
            start += len(entry.requests)
            entry.done.set()
