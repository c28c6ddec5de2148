"""One worker of the Ray executor: the chain's engines, and the chain run over the records it is sent.

A :class:`ChainWorker` is what each Ray actor holds (this module never imports Ray: the driver
wraps the class with ``ray.remote``). It registers the engine definitions the driver sent, opens
the run's ledger file (the same SQLite file as every other worker and the driver: WAL, one
committed transaction per answer) and keeps its own broker, so its engines start on the first
chunk that needs them and stay up until :meth:`ChainWorker.close`.

:meth:`ChainWorker.run_chunk` is a generator (a Ray streaming generator on the driver's side):
each record of the chunk runs through the chain's items on its own (``stages.run_alone``: as a
per-record stage's task runs it, in a task of its own, so none waits for a sibling), into a sink
that only collects that record's rows, failures and flattened rows, with that record's node
counters. A record's
:class:`ChunkResult` is handed back as soon as it is done (those done while the driver was busy
reading the last, merged into one), naming the records it holds in ``done``: the driver writes it
then, and a lost worker's chunk is sent again only for the records it had not handed back. A chain
of sync ``apply`` nodes only (nothing waits) runs over the chunk as one and hands it back whole.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engines.broker import EngineBroker
from ..engines.registry import EngineConfig, register_config
from ..graph.chain import ChainGraph
from .context import NodeStats, RunContext
from .records import Record, coerce
from .requests import CacheMode, RequestCache
from .stages import per_record, run_alone

__all__ = ["ChainWorker", "ChunkResult", "ChunkSink", "RecordIn", "add_stats"]

RecordIn = tuple[str, int, Any, float | None, int | None]
"""A record as the driver sends it: ``(id, index, input value dumped, seconds left before its
deadline or None, token budget or None)``. Seconds left, not a deadline: ``time.monotonic()``
means nothing on another machine."""


@dataclass
class ChunkResult:
    """What some records of a chunk produced, handed back whole once they are done (the driver
    writes it, or nothing of it)."""

    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """``(folder, row)`` for every node output row, in the order the runners wrote them."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    flattened: list[dict[str, Any]] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    """Folders a runner opened that the run's layout may not have (a map's, a loop's)."""
    stats: dict[str, NodeStats] = field(default_factory=dict)
    """This chunk's :class:`~chainette.runtime.context.NodeStats` by node id (a loop's are
    ``LoopStats``: the driver keeps the kind); counts, and counts by key: they add up."""
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What the worker's started engines say about themselves (``metadata.json``'s ``engines``)."""
    worker: int = 0
    """The process id of the worker that ran the chunk."""
    done: list[str] = field(default_factory=list)
    """The ids of the records (as sent) whose every row is in this result."""

    def merge(self, other: ChunkResult) -> None:
        """Add ``other``'s rows, failures, folders, counters and records to this result."""
        self.rows.extend(other.rows)
        self.failures.extend(other.failures)
        self.flattened.extend(other.flattened)
        self.folders.extend(key for key in other.folders if key not in self.folders)
        for node_id, theirs in other.stats.items():
            add_stats(self.stats, node_id, theirs)
        self.done.extend(other.done)


def add_stats(into: dict[str, NodeStats], node_id: str, theirs: NodeStats) -> None:
    """``theirs`` (counters of ``node_id``) added to ``into``'s, of their kind (a loop's
    ``LoopStats``: its ``stop_reasons`` added key by key, its ``passes``)."""
    ours = into.get(node_id)
    if ours is None or (type(ours) is not type(theirs) and isinstance(theirs, type(ours))):
        ours = into[node_id] = type(theirs)(**(vars(ours) if ours is not None else {}))
    for name, value in vars(theirs).items():
        if isinstance(value, dict):
            counts = getattr(ours, name)
            for key, count in value.items():
                counts[key] = counts.get(key, 0) + count
        else:
            setattr(ours, name, getattr(ours, name) + value)


class ChunkSink:
    """A :class:`~chainette.runtime.context.RecordSink` that keeps everything for the driver."""

    def __init__(self, result: ChunkResult) -> None:
        self.result = result

    def add(self, key: str, row: dict[str, Any]) -> None:
        self.result.rows.append((key, row))

    def add_failure(self, row: dict[str, Any]) -> None:
        self.result.failures.append(row)

    def add_flattened(self, row: dict[str, Any]) -> None:
        self.result.flattened.append(row)

    def open_folder(self, key: str) -> None:
        if key not in self.result.folders:
            self.result.folders.append(key)

    async def maybe_flush(self) -> None:
        """Nothing to flush: the driver writes."""


class ChainWorker:
    """Runs ``chain`` over the chunks it is given (in a Ray actor: several at once, on its loop).

    Args:
        chain: The chain (pickled by the driver; its models and functions come with it).
        engines: The definitions of the engines the chain uses, as the driver resolved them.
        ledger: The ledger file (an absolute path), or None when the run has no cache.
        cache: The run's cache mode.
        record_deadline_s: The run's ``record_deadline_s`` (for the messages of deadline failures).
    """

    def __init__(
        self,
        chain: ChainGraph,
        engines: list[EngineConfig],
        ledger: str | None,
        cache: CacheMode,
        record_deadline_s: float | None = None,
    ) -> None:
        for config in engines:
            register_config(config)
        self.chain = chain
        self._ledger = Path(ledger) if ledger is not None else None
        self._mode: CacheMode = cache if ledger is not None else "off"
        self._deadline_s = record_deadline_s
        self._ctx: RunContext | None = None

    def _context(self) -> RunContext:
        """Made on the first chunk, on the actor's event loop (the broker's locks belong to it)."""
        if self._ctx is None:
            users = Counter(n.engine_name for n in self.chain.iter_nodes() if n.engine_name is not None)
            broker = EngineBroker(users, idle_timeout=None)  # the worker lives as long as the run
            cache = RequestCache.open(self._ledger, self._mode)
            self._ctx = RunContext(ChunkSink(ChunkResult()), broker, _ignore_event, cache)
            self._ctx.record_deadline_s = self._deadline_s
        return self._ctx

    def pid(self) -> int:
        """This worker's process id (a test kills it)."""
        return os.getpid()

    async def run_chunk(self, records: list[RecordIn]) -> AsyncIterator[ChunkResult]:
        """Run the chain's nodes over ``records``, each record on its own (none waits for a
        sibling: its loop passes, deadline and requests are its own); hand back each record's
        rows as soon as it is done (those done since the last hand-back, merged into one)."""
        base = self._context()
        model = self.chain.input_type
        now = time.monotonic()
        chunk = []
        for rid, index, dumped, left, budget in records:
            value = coerce(model, dumped)
            deadline = None if left is None else now + left
            chunk.append(Record(rid, index, value, {"input": value}, deadline=deadline, budget=budget))
        if not per_record(self.chain.items):  # sync applies only: nothing waits, the chunk as one
            yield _described(await self._run(base, chunk), base)
            return
        # asyncio, not a task group: a generator must not yield inside a cancel scope (Ray runs
        # an actor's methods on its asyncio loop)
        finished: asyncio.Queue[ChunkResult | BaseException] = asyncio.Queue()

        async def one(record: Record) -> None:
            try:
                finished.put_nowait(await self._run(base, [record]))
            except BaseException as exc:  # the run stops: the driver raises it
                finished.put_nowait(exc)
                raise

        tasks = [asyncio.ensure_future(one(record)) for record in chunk]
        try:
            left = len(tasks)
            while left:
                part = await _take(finished)
                left -= 1
                while not finished.empty():  # what else is done: one hand-back
                    part.merge(await _take(finished))
                    left -= 1
                yield _described(part, base)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, base: RunContext, chunk: list[Record]) -> ChunkResult:
        result = ChunkResult(worker=os.getpid(), done=[record.id for record in chunk])
        ctx = replace(base, writer=ChunkSink(result), stats={})  # limiters, broker, ledger: shared
        await run_alone(self.chain.items, ctx, chunk)  # flattened by the sink
        result.stats = ctx.stats
        return result

    async def close(self) -> None:
        """Release the engines and close the ledger."""
        if self._ctx is not None:
            await self._ctx.broker.aclose()
            self._ctx.cache.close()
            self._ctx = None


def _described(part: ChunkResult, base: RunContext) -> ChunkResult:
    """``part`` with what the worker's started engines say about themselves, as it is handed back."""
    part.engines = dict(base.broker.described)
    return part


async def _take(finished: asyncio.Queue[ChunkResult | BaseException]) -> ChunkResult:
    got = await finished.get()
    if isinstance(got, BaseException):
        raise got
    return got


def _ignore_event(kind: str, data: dict[str, Any]) -> None:
    """A worker's own events stay in the worker: the driver reports progress from the results."""
