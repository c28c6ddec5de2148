"""Running a :class:`~chainette.graph.map.Map`: spawn each record's children lazily, run the body
over them in sub-chunks, collect each record's outputs when its last child is done.

Memory is bounded whatever the list lengths: children are made only when a sub-chunk is built
(``child_batch`` of them, taken from the records in order), at most ``concurrency`` sub-chunks
are in flight, and a record keeps only its collected outputs until it completes. A sub-chunk may
hold children of several records, so short lists still reach the engine in full batches. With
``join_k`` a record has at most one sub-chunk in flight, of at most the successes it still needs:
its children run in item order and no child past the ``k``-th success is ever started, so a
rerun makes the same choice (and sends nothing, the ledger holding it all).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from .._errors import RecordError
from ..graph.map import Map
from ..graph.view import RecordView
from .context import RunContext
from .dispatch import run_sequence
from .records import Record, describe_validation, owner_id

__all__ = ["run_map"]


def _slots(node: Map, ctx: RunContext) -> anyio.Semaphore:
    """``node.concurrency`` sub-chunks in flight for the whole node: records go through a chain
    one by one, several at once, and all of them share the bound (children alive stay bounded)."""
    key = f"{node.id}:map_slots"
    slots = ctx.state.get(key)
    if slots is None:
        slots = ctx.state[key] = anyio.Semaphore(node.concurrency)
    assert isinstance(slots, anyio.Semaphore)
    return slots


Spawned = list[tuple["_Parent", int, Record]]


@dataclass(eq=False)
class _Parent:
    """One record of the chunk while its children run."""

    record: Record
    position: int
    items: Sequence[Any]
    next: int = 0
    """The next item to spawn: children ``0 .. next-1`` have been started."""
    running: int = 0
    outputs: dict[int, list[Any]] = field(default_factory=dict)
    """Child position → its outputs (children that succeeded)."""
    failures: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    """Child position → (failed record id, node, message): its first failure."""
    filtered: int = 0

    def wants(self, node: Map) -> int:
        """How many more children may be started now."""
        left = len(self.items) - self.next
        if node.join_k is None or not left:
            return left
        if self.running or (self.failures and node.on_child_failure == "fail"):
            return 0  # one sub-chunk at a time; a failure in "fail" mode decides the record already
        return max(0, min(node.join_k - len(self.outputs), left))

    def finished(self, node: Map) -> bool:
        return not self.running and not self.wants(node)


class _MapRun:
    """The map over one chunk: which children to start next, and what each parent collects."""

    def __init__(self, node: Map, chunk: list[Record], ctx: RunContext) -> None:
        self.node = node
        self.ctx = ctx
        self.waiting: deque[tuple[int, Record]] = deque(enumerate(chunk))
        """Records whose children have not started yet, in order."""
        self.open: list[_Parent] = []
        """Records with children started (or to start) and not collected yet, in order."""
        self.results: list[Record | None] = [None] * len(chunk)
        self.in_flight = 0
        self._wake = anyio.Event()

    async def run(self) -> list[Record]:
        slots = _slots(self.node, self.ctx)
        async with anyio.create_task_group() as tg:
            while True:
                if self.in_flight >= self.node.concurrency:
                    await self._wait()
                    continue
                if self.in_flight and not self._can_spawn():
                    await self._wait()
                    continue
                await slots.acquire()  # the node's sub-chunks in flight, across every record in flight
                spawned = self._spawn()
                if spawned:
                    self.in_flight += 1
                    tg.start_soon(self._run_body, spawned)
                    del spawned  # not kept alive here while this record waits (many records map at once)
                    continue
                slots.release()
                if self.in_flight:
                    await self._wait()
                else:
                    break
        assert not self.open and not self.waiting
        return [r for r in self.results if r is not None]

    def _can_spawn(self) -> bool:
        """Whether :meth:`_spawn` would start a child now (without starting one)."""
        return bool(self.waiting) or any(parent.wants(self.node) for parent in self.open)

    async def _wait(self) -> None:
        self._wake = anyio.Event()  # no await between the check and here: no completion is missed
        await self._wake.wait()

    def _spawn(self) -> Spawned:
        """The next sub-chunk: children of the open records first (oldest first), then of the
        next waiting records, up to ``child_batch``."""
        space = self.node.child_batch
        spawned: Spawned = []
        for parent in self.open:
            space -= self._take(parent, space, spawned)
            if not space:
                return spawned
        while space and self.waiting:
            opened = self._open(*self.waiting.popleft())
            if opened is not None:
                space -= self._take(opened, space, spawned)
        return spawned

    def _take(self, parent: _Parent, space: int, spawned: Spawned) -> int:
        n = min(parent.wants(self.node), space)
        record = parent.record
        for k in range(parent.next, parent.next + n):
            value = _wrap(parent.items[k], self.node.item_field)
            child = Record(
                id=f"{record.id}/{k}",
                index=record.index,
                value=value,
                history=dict(record.history),
                deadline=record.deadline,  # the parent's limits hold inside the body: its deadline, and
                budget=None if record.budget is None else record.budget - record.tokens,  # what it has left
            )
            spawned.append((parent, k, child))
        parent.next += n
        parent.running += n
        return n

    def _open(self, position: int, record: Record) -> _Parent | None:
        """Start on ``record``: its list, checked; None when it is already done (failed, empty)."""
        try:
            items = _items(self.node, record)
        except _BadList as exc:
            self._fail(record, str(exc))
            return None
        parent = _Parent(record, position, items)
        if parent.finished(self.node):  # an empty list
            self._collect(parent)
            return None
        self.open.append(parent)
        return parent

    async def _run_body(self, spawned: Spawned) -> None:
        body_ctx = self.ctx.for_map_body()
        by_id = {child.id: (parent, k) for parent, k, child in spawned}
        try:
            outputs = await run_sequence(self.node.body, [child for _, _, child in spawned], body_ctx)
        except BaseException:
            _slots(self.node, self.ctx).release()
            raise
        for parent, _, _ in spawned:
            parent.running -= 1
        for record in outputs:
            parent, k = _owner(by_id, record.id)
            parent.outputs.setdefault(k, []).append(record.value)
        assert body_ctx.child_failures is not None
        for failed_id, (node_id, message) in body_ctx.child_failures.items():
            parent, k = _owner(by_id, failed_id)
            parent.failures.setdefault(k, (failed_id, node_id, message))
            parent.outputs.pop(k, None)  # one failure fails the child, whatever else it produced
        for parent, k, _ in spawned:
            if k not in parent.outputs and k not in parent.failures:
                parent.filtered += 1
        for parent in dict.fromkeys(p for p, _, _ in spawned):
            if parent.finished(self.node):
                self.open.remove(parent)
                self._collect(parent)
        self.in_flight -= 1
        self._wake.set()
        _slots(self.node, self.ctx).release()  # last: this sub-chunk's children are done with

    def _collect(self, parent: _Parent) -> None:
        """Hand ``parent`` on with its collected outputs under the map's id, or fail it."""
        node, record = self.node, parent.record
        failed = sorted(parent.failures)
        if failed and node.on_child_failure == "fail":
            child_id, node_id, message = parent.failures[failed[0]]
            self._fail(
                record,
                f"item {failed[0]} (child {child_id}) failed at {node_id!r}: {message} "
                "(on_child_failure='skip' leaves failed items out, 'partial' keeps None in their place)",
            )
            return
        items: list[Any] = []
        for k in range(parent.next):
            if k in parent.outputs:
                items.extend(parent.outputs[k])
            elif k in parent.failures and node.on_child_failure == "partial":
                items.append(None)
        try:
            collected = node.output_model(
                items=items,
                total=len(parent.items),
                failed=failed,
                filtered=parent.filtered,
                skipped=len(parent.items) - parent.next,
                errors={k: parent.failures[k][2] for k in failed},
            )
        except ValidationError as exc:
            self._fail(
                record,
                f"the body's outputs do not fit {node.output_model.__name__}: {describe_validation(exc)}",
            )
            return
        record.history[node.key] = collected  # the value goes on unchanged
        self.results[parent.position] = record
        stats = self.ctx.node(node.id)
        stats.records_out += 1
        stats.done += 1
        key = f"map:{node.id}:items"
        self.ctx.state[key] = self.ctx.state.get(key, 0) + len(parent.items)
        self.ctx.progress(node.id, detail=f"{self.ctx.state[key]:,} items")

    def _fail(self, record: Record, problem: str) -> None:
        error = RecordError(f"Map {self.node.id!r}: {problem}", node_id=self.node.id, record_id=record.id)
        self.ctx.fail(record, error)
        self.ctx.progress(self.node.id)


class _BadList(Exception):
    """``over`` gave no usable list for a record (the message says why and what to do)."""


def _items(node: Map, record: Record) -> Sequence[Any]:
    value, over = record.value, node.over
    try:
        if isinstance(over, str):
            if isinstance(value, dict):
                if over not in value:
                    raise _BadList(
                        f"the value has no field {over!r} (keys: {', '.join(map(str, value)) or 'none'})."
                    )
                items = value[over]
            elif not hasattr(value, over):
                raise _BadList(f"the value ({type(value).__name__}) has no field {over!r}.")
            else:
                items = getattr(value, over)
        elif node.over_wants_record:
            items = over(value, RecordView(record.id, record.index, record.history))
        else:
            items = over(value)
    except _BadList:
        raise
    except Exception as exc:
        raise _BadList(f"over raised {type(exc).__name__}: {exc}") from exc
    where = f"field {over!r}" if isinstance(over, str) else "over"
    if not isinstance(items, (list, tuple)):
        raise _BadList(f"{where} gave {type(items).__name__}, not a list; give a list ([] for no items).")
    if node.item_field is None:
        scalar = next((k for k, item in enumerate(items) if not isinstance(item, (BaseModel, dict))), None)
        if scalar is not None:
            raise _BadList(
                f"item {scalar} of {where} is a {type(items[scalar]).__name__}, not a model or dict; pass "
                "item_field='<field>' to wrap each item as {field: item}."
            )
    return items


def _wrap(item: Any, item_field: str | None) -> Any:
    """A child's value: a model or dict item as is, anything else as ``{item_field: item}``."""
    if isinstance(item, (BaseModel, dict)) or item_field is None:
        return item
    return {item_field: item}


def _owner(by_id: dict[str, tuple[_Parent, int]], record_id: str) -> tuple[_Parent, int]:
    """The child a body output or failure belongs to: itself, or the child it was fanned out of
    (``<child>.<k>``, ``<child>.<route>``)."""
    key = owner_id(by_id, record_id)
    assert key is not None, record_id
    return by_id[key]


async def run_map(node: Map, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """Run ``node`` over ``chunk``: the records that go on, in input order, each with its
    collected outputs under ``node.id``."""
    ctx.node(node.id).records_in += len(chunk)
    return await _MapRun(node, chunk, ctx).run()
