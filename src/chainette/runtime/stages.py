"""How records move through a chain's stages: each on its own, so none waits for a sibling.

The chain's items are cut into stages only at whole-stream nodes (``take``, ``shuffle``: they
see the stream, so they are stages of their own, run chunk by chunk). Every other run of items
is one stage, and in it *each record is its own task*: it goes through the stage's nodes as a
chunk of one and is handed on (or written) the moment it is done, whatever its siblings do. A
slow request holds back its own record only: a loop's passes, deadline and token budget are the
record's own, a join waits for that record's branches, and the engines see as many requests as
records are in flight. What still waits for siblings is what the construct means: a map's
collect and ``join_k`` (the children of one record), ``take`` / ``shuffle``, and a provider
batch (the engine's call, fed by ``runtime/coalesce.py`` from whatever is pending).

In flight: a stage starts a record only once it holds one of ``max_in_flight`` slots
(:class:`Flow`), given back when the record's outputs are handed on, so a slow writer or stage
downstream stops the reading (backpressure) and memory stays flat. A stage of sync ``apply``
nodes only (no waiting in it) runs chunk by chunk, as reading hands them on: batching pays there.

What needs no waiting is done before any task, chunk by chunk (:func:`_ahead`): a step whose
answers the ledger holds settles those records of the chunk at once, in one read
(``Runner.settle``, ``runtime/step_cached.py``), and the sync ``apply`` nodes after it run over
them; only the records left waiting (a miss, a re-ask) get tasks, from the item where they wait.
So a cached rerun costs what the chunkwise runner cost, and a cached record still never waits for
an uncached sibling's request: it is handed on (or written) before those requests are even sent.

Order: rows land in completion order, each with ``_index`` (its input position). A stage that
feeds a ``take`` or ``shuffle`` hands records on in the order they came in (``take(n)`` is the
first ``n``, a seeded shuffle the same every run). With ``ordered=True`` every stage does so (a finished record waits,
holding its slot, for those before it: memory still bounded by ``max_in_flight``; throughput as
slow as the slowest record in a window of ``max_in_flight``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel

from ..graph.chain import ChainGraph
from ..graph.nodes import Node
from .apply_fused import fused_run, run_fused
from .context import RunContext
from .dispatch import runner_for
from .held_rows import ChunkRows, HeldRows
from .records import Record

__all__ = ["Flow", "flatten", "run_alone", "run_stage", "stages"]

Chunk = list[Record]


REORDER = 16
"""With ``ordered``: finished records that may wait for those before them, per record in flight.
At 4 it throttled a 10 % / 2 s tail: at the 640 requests/s that 128 slots allow, 1,280 records
finish behind a head that takes 2 s, which filled 5 × 256 and paused the reading."""


@dataclass
class Flow:
    """Records in flight in one per-record stage: at most ``limit`` being worked on (``peak``: the
    most seen); with ``ordered``, at most ``REORDER × limit`` more finished and waiting for their
    turn to be handed on."""

    limit: int
    ordered: bool = False
    in_flight: int = 0
    peak: int = 0
    _slots: anyio.Semaphore | None = field(default=None, repr=False)
    _window: anyio.Semaphore | None = field(default=None, repr=False)

    async def enter(self, *, window: bool = True, slot: bool = True) -> None:
        """Take a slot (and, ordered, a place in the window); without yielding when one is free,
        so the records of a chunk start in the same moment (their identical requests are sent
        once, their engine calls gathered). A record settled in its chunk (``stages._ahead``)
        takes no slot; one that then waits takes its slot after its place (``window=False``)."""
        if self.ordered and window:
            if self._window is None:
                self._window = anyio.Semaphore(self.limit * (1 + REORDER))
            await _take(self._window)
        if not slot:
            return
        if self._slots is None:
            self._slots = anyio.Semaphore(self.limit)
        await _take(self._slots)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def try_place(self) -> bool:
        """(ordered) Take a place in the window if one is free now, without waiting."""
        if self._window is None:
            self._window = anyio.Semaphore(self.limit * (1 + REORDER))
        try:
            self._window.acquire_nowait()
        except anyio.WouldBlock:
            return False
        return True

    def done(self) -> None:
        """The record's work is done: its slot goes to the next record."""
        assert self._slots is not None
        self.in_flight -= 1
        self._slots.release()

    def handed_on(self) -> None:
        """(ordered) The record was handed on: its place in the window goes to the next."""
        assert self._window is not None
        self._window.release()


async def _take(semaphore: anyio.Semaphore) -> None:
    try:
        semaphore.acquire_nowait()
    except anyio.WouldBlock:
        await semaphore.acquire()


class _Passed:
    """Which items of a per-record stage every record is done with, so that an engine no later
    item uses is released as soon as the last record has passed the items that use it."""

    def __init__(self, items: list[Node], ctx: RunContext) -> None:
        self.items, self.ctx = items, ctx
        self.before = [0] * len(items)
        """Records in flight that have not passed item ``i`` yet."""
        self.ended = False
        self.released = 0
        """Items ``0 .. released-1`` are done for good: their engines were told (``node_done``)."""

    def start(self) -> list[int]:
        for i in range(len(self.before)):
            self.before[i] += 1
        return [0]  # the record's own mark: the next item it has not passed

    async def passed(self, mark: list[int], upto: int) -> None:
        """The record of ``mark`` is done with items ``< upto`` (``len(items)``: with all)."""
        for i in range(mark[0], upto):
            self.before[i] -= 1
        mark[0] = max(mark[0], upto)
        await self.release()

    async def end_of_input(self) -> None:
        self.ended = True
        await self.release()

    async def release(self) -> None:
        while self.ended and self.released < len(self.items) and self.before[self.released] == 0:
            item = self.items[self.released]
            self.released += 1
            for node in item.leaves():
                if node.engine_name is not None:
                    await self.ctx.broker.node_done(node.engine_name)


def stages(chain: ChainGraph) -> list[list[Node]]:
    """Chain items grouped into stages: a whole-stream node is a stage of its own; every run of
    other items between them is one stage."""
    out: list[list[Node]] = []
    for item in chain.items:
        if item.whole_stream or not out or out[-1][0].whole_stream:
            out.append([item])
        else:
            out[-1].append(item)
    return out


def per_record(items: Sequence[Node]) -> bool:
    """Whether a stage runs record by record: it holds something that waits (an engine call, an
    async function, a control-flow kind); a stage of sync ``apply`` nodes only runs chunkwise."""
    return not items[0].whole_stream and not all(i.fusable for i in items)


async def run_stage(
    items: list[Node],
    ctx: RunContext,
    receive: MemoryObjectReceiveStream[Chunk],
    send: MemoryObjectSendStream[Chunk] | None,
    flow: Flow | None,
) -> None:
    """Run ``items`` over what ``receive`` brings, per record when ``flow`` is given, else chunk
    by chunk; hand the outputs on to ``send``, or (last stage) write them."""
    try:
        if flow is None:
            async for chunk in receive:
                await _push(items, ctx, chunk, 0, send)
            flush = runner_for(items[0]).flush
            if flush is not None:  # a whole-stream node hands on what it still holds
                async for part in flush(items[0], ctx):
                    await _push(items, ctx, part, 1, send)
            done = 0
        else:
            passed = _Passed(items, ctx)
            await _per_record(items, ctx, receive, send, flow, passed)
            done = passed.released  # those items' engines were told already
    finally:
        receive.close()
        if send is not None:
            send.close()
    for node in (n for item in items[done:] for n in item.leaves()):
        if node.engine_name is not None:
            await ctx.broker.node_done(node.engine_name)


async def run_alone(items: list[Node], ctx: RunContext, chunk: Chunk) -> None:
    """``chunk`` through ``items`` and written to ``ctx.writer`` with no stage around it: a Ray
    worker's unit (one record, as a per-record stage's task runs it, with its own sink and
    counters; or, for sync ``apply`` nodes only, the whole chunk). No engine is told the items
    are done: the worker runs more records over the same engines."""
    await _push(items, ctx, chunk, 0, None)


async def _per_record(
    items: list[Node],
    ctx: RunContext,
    receive: MemoryObjectReceiveStream[Chunk],
    send: MemoryObjectSendStream[Chunk] | None,
    flow: Flow,
    passed: _Passed,
) -> None:
    """Each record its own task, started once it holds a slot; handed on as soon as it is done
    (or, ``flow.ordered``, once those that came in before it have been). What needs no waiting
    is done first, chunk by chunk (:func:`_ahead`): only the records left waiting get tasks."""
    fast = ctx.observe_nodes is None  # an observer times every node per record: no fast path

    async def one(
        chunk: Chunk, at: int, finish: Finish | None, ctx: RunContext, collect: Chunk | None
    ) -> None:
        """``chunk`` (one record's) through ``items[at:]``; with ``finish``, first that."""
        mark = passed.start()
        try:
            if at:
                await passed.passed(mark, at)
            if finish is not None:
                chunk = await finish()
                at += 1
                await passed.passed(mark, at)
            await _push(
                items,
                ctx,
                chunk,
                at,
                None if collect is not None else send,
                collect=collect,
                passed=(passed, mark),
            )
        finally:
            flow.done()
        await passed.passed(mark, len(items))

    if not flow.ordered:
        async with anyio.create_task_group() as tg:
            async for chunk in receive:
                at = 0
                if fast:
                    chunk, at, later = await _ahead(items, ctx, chunk)
                    for i, record, finish in later:
                        await flow.enter()
                        tg.start_soon(one, [record], i, finish, ctx, None)
                    if at == len(items):
                        if chunk:
                            await _hand_on(chunk, ctx, send)
                        continue
                for record in chunk:
                    await flow.enter()
                    tg.start_soon(one, [record], at, None, ctx, None)
            await passed.end_of_input()
        return

    turn = 0  # the next position to hand on
    handing = False  # a caller of drain() is handing on the run of finished records from ``turn``
    done: dict[int, tuple[Chunk, HeldRows | None]] = {}

    async def drain() -> None:
        """Hand on the run of finished records that starts at ``turn``. Whoever finds no one
        handing on takes the turn and hands on from the head, taking up those that finish while it
        waits on the stream; every other caller returns at once. (Not a lock: its queue of
        waiters, one finished task each, grew with the number of records whenever records
        finished faster than the head was handed on.)"""
        nonlocal turn, handing
        if handing:
            return
        handing = True
        try:
            while turn in done:
                ready: Chunk = []
                count = 0
                while turn in done:
                    outputs, rows = done.pop(turn)
                    turn += 1
                    if rows is not None:
                        rows.release()
                    ready.extend(outputs)
                    count += 1
                await _hand_on(ready, ctx, send)
                for _ in range(count):
                    flow.handed_on()
        finally:
            handing = False

    async def ordered(
        position: int, chunk: Chunk, at: int, finish: Finish | None, held: HeldRows, own: RunContext
    ) -> None:
        outputs: Chunk = []
        await one(chunk, at, finish, own, outputs)  # its slot is given back; it waits in the window
        done[position] = (outputs, held)
        await drain()

    position = 0
    async with anyio.create_task_group() as tg:
        async for chunk in receive:
            if fast and len({record.index for record in chunk}) == len(chunk):
                await _ordered_chunk(items, ctx, chunk, position, flow, done, tg, ordered, drain)
                position += len(chunk)
                await drain()
                continue
            for record in chunk:
                await flow.enter()
                held = HeldRows(ctx.writer)  # its step rows too wait for their turn
                tg.start_soon(ordered, position, [record], 0, None, held, replace(ctx, writer=held))
                position += 1
        await passed.end_of_input()


Finish = Callable[[], Awaitable[Chunk]]


async def _ahead(
    items: list[Node], ctx: RunContext, chunk: Chunk
) -> tuple[Chunk, int, list[tuple[int, Record, Finish]]]:
    """Run the stage's first items over the whole ``chunk`` while nothing in them waits: kinds
    with a fast path (``Runner.settle``: a step settles the records the ledger answers), and,
    after one, sync ``apply`` nodes that run on the loop (their records were settled together:
    on their own they would run the same calls back to back). Returns what went through
    ``items[:at]``, ``at``, and the records left waiting at an item (``(item index, record, what
    finishes it there)``)."""
    later: list[tuple[int, Record, Finish]] = []
    at = 0
    while at < len(items) and chunk:
        item = items[at]
        if item.streams:
            break
        runner = runner_for(item)
        if item.fusable and at and item.id not in ctx.threaded:
            chunk = await runner.run(item, chunk, ctx)
        elif runner.settle is not None:
            settled = await runner.settle(item, chunk, ctx)
            if settled is None:
                break
            chunk, waiting = settled
            later.extend((at, record, finish) for record, finish in waiting)
        else:
            break
        at += 1
    return chunk, at, later


async def _ordered_chunk(
    items: list[Node],
    ctx: RunContext,
    chunk: Chunk,
    base: int,
    flow: Flow,
    done: dict[int, tuple[Chunk, HeldRows | None]],
    tg: anyio.abc.TaskGroup,
    ordered: Callable[[int, Chunk, int, Finish | None, HeldRows, RunContext], Coroutine[Any, Any, None]],
    drain: Callable[[], Awaitable[None]],
) -> None:
    """(ordered) :func:`_ahead` over a chunk at positions ``base ...``, its rows held; then,
    position by position, each takes its place in the window and is put in ``done`` or started
    as its own task (from the item it waits at). A chunk done whole is handed on as one (its
    outputs and rows at its first position's turn)."""
    rows_of = ChunkRows(ctx.writer)
    out, at, later = await _ahead(items, replace(ctx, writer=rows_of), chunk)
    if not later and at == len(items):
        for k in range(base, base + len(chunk)):
            if not flow.try_place():  # the window is full: hand on what is done, or wait for it
                await drain()
                await flow.enter(slot=False)
            done[k] = (out, rows_of.whole()) if k == base else ([], None)
        return
    held = {record.index: HeldRows(ctx.writer) for record in chunk}
    rows_of.split(held)
    where = {record.index: base + k for k, record in enumerate(chunk)}
    starts: dict[int, tuple[Chunk, int, Finish | None]] = {
        where[record.index]: ([record], i, finish) for i, record, finish in later
    }
    finished: dict[int, Chunk] = {}
    for record in out:
        k = where[record.index]
        if at < len(items):
            starts.setdefault(k, ([], at, None))[0].append(record)
        else:
            finished.setdefault(k, []).append(record)
    for record in chunk:
        k = where[record.index]
        if not flow.try_place():  # the window is full: hand on what is done, or wait for it
            await drain()
            await flow.enter(slot=False)
        rows = held[record.index]
        start = starts.get(k)
        if start is None:
            done[k] = (finished.get(k, []), rows)
            continue
        await flow.enter(window=False)
        tg.start_soon(ordered, k, start[0], start[1], start[2], rows, replace(ctx, writer=rows))


async def _push(
    items: list[Node],
    ctx: RunContext,
    chunk: Chunk,
    start: int,
    send: MemoryObjectSendStream[Chunk] | None,
    *,
    collect: Chunk | None = None,
    passed: tuple[_Passed, list[int]] | None = None,
) -> None:
    """Run ``items[start:]`` over ``chunk`` and hand the result on (or write it, or, given
    ``collect``, keep it there)."""
    i = start
    while i < len(items) and chunk:
        end = fused_run(items, i, ctx, _run_of)
        if end > i:  # sync applies on the loop, one pass per record through all of them
            chunk = run_fused(items[i:end], chunk, ctx)
            i = end
            if passed is not None:
                await passed[0].passed(passed[1], i)
            continue
        item = items[i]
        i += 1
        runner = runner_for(item)
        observe = ctx.observe_nodes  # a traced run: every node timed, its passes gathered
        if observe is not None:
            chunk = await observe(item, chunk, ctx, runner.run)
            continue
        if item.streams and runner.stream is not None:  # many outputs per record: a pass at a time
            async for part in runner.stream(item, chunk, ctx):
                await _push(items, ctx, part, i, send, collect=collect)
            return
        chunk = await runner.run(item, chunk, ctx)
        if passed is not None:
            await passed[0].passed(passed[1], i)
    if collect is not None:
        collect.extend(chunk)
    else:
        await _hand_on(chunk, ctx, send)


def _run_of(node: Node) -> Any:
    return runner_for(node).run


async def _hand_on(chunk: Chunk, ctx: RunContext, send: MemoryObjectSendStream[Chunk] | None) -> None:
    if send is None:
        for record in chunk:
            ctx.writer.add_flattened(flatten(record))
    elif chunk:
        await send.send(chunk)
    await ctx.writer.maybe_flush()


def flatten(record: Record) -> dict[str, Any]:
    """One row merging the record's history: ``{"_id", "_index", "<key>.<field>": value, ...}``."""
    row: dict[str, Any] = {"_id": record.id, "_index": record.index}
    for key, value in record.history.items():
        # records.dump, inlined: this runs per node per row
        dumped = (
            value.__pydantic_serializer__.to_python(value, mode="json")
            if isinstance(value, BaseModel)
            else value
        )
        if isinstance(dumped, dict):
            prefix = key + "."
            for name, v in dumped.items():
                row[prefix + name] = v
        else:
            row[key] = dumped
    return row
