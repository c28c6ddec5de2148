"""One worker of the Ray executor: the chain's engines, and the chain run over one chunk at a time.

A :class:`ChainWorker` is what each Ray actor holds (this module never imports Ray: the driver
wraps the class with ``ray.remote``). It registers the engine definitions the driver sent, opens
the run's ledger file (the same SQLite file as every other worker and the driver: WAL, one
committed transaction per answer) and keeps its own broker, so its engines start on the first
chunk that needs them and stay up until :meth:`ChainWorker.close`. Each chunk runs through the
chain's items as a local per-record stage runs (``stages.run_records``: what needs no waiting
chunk by chunk, every other record its own task, so none waits for a sibling), into a sink that
only collects: the rows, failures and flattened rows come back to the driver in one
:class:`ChunkResult`, with the chunk's own node counters, and nothing reaches the run folder until
the driver has that whole result (a record done early still waits for its chunk there).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engines.broker import EngineBroker
from ..engines.registry import EngineConfig, register_config
from ..graph.chain import ChainGraph
from .context import NodeStats, RunContext
from .records import Record, coerce
from .requests import CacheMode, RequestCache
from .stages import run_records

__all__ = ["ChainWorker", "ChunkResult", "ChunkSink", "RecordIn"]

RecordIn = tuple[str, int, Any, float | None, int | None]
"""A record as the driver sends it: ``(id, index, input value dumped, seconds left before its
deadline or None, token budget or None)``. Seconds left, not a deadline: ``time.monotonic()``
means nothing on another machine."""


@dataclass
class ChunkResult:
    """What one chunk produced, handed back whole (the driver writes it, or nothing of it)."""

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

    async def run_chunk(self, records: list[RecordIn]) -> ChunkResult:
        """Run the chain's nodes over ``records``, each record on its own (none waits for a
        sibling: its loop passes, deadline and requests are its own); everything they produced,
        in one result."""
        base = self._context()
        result = ChunkResult(worker=os.getpid())
        ctx = replace(base, writer=ChunkSink(result), stats={})  # limiters, broker, ledger: shared
        model = self.chain.input_type
        now = time.monotonic()
        chunk = []
        for rid, index, dumped, left, budget in records:
            value = coerce(model, dumped)
            deadline = None if left is None else now + left
            chunk.append(Record(rid, index, value, {"input": value}, deadline=deadline, budget=budget))
        await run_records(self.chain.items, ctx, chunk)  # each record on its own; flattened by the sink
        result.stats = ctx.stats
        result.engines = dict(base.broker.described)
        return result

    async def close(self) -> None:
        """Release the engines and close the ledger."""
        if self._ctx is not None:
            await self._ctx.broker.aclose()
            self._ctx.cache.close()
            self._ctx = None


def _ignore_event(kind: str, data: dict[str, Any]) -> None:
    """A worker's own events stay in the worker: the driver reports progress from the results."""
