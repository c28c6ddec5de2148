"""Running the whole-stream nodes :class:`~chainette.graph.stream_ops.Take` and
:class:`~chainette.graph.stream_ops.Shuffle`.

Their state (records passed, the shuffle buffer) lives in ``ctx.state`` for the run; each is a
stage of its own with one worker, so chunks reach it one at a time. ``flush`` is called once the
stage's input has ended.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..graph.stream_ops import Shuffle, Take
from .context import RunContext
from .records import Record

__all__ = ["flush_shuffle", "run_shuffle", "run_take"]


async def run_take(node: Take, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    passed = ctx.state.get(node.id, 0)
    keep = chunk[: max(0, node.n - passed)]
    ctx.state[node.id] = passed + len(keep)
    stats.records_in += len(chunk)
    stats.records_out += len(keep)
    stats.filtered += len(chunk) - len(keep)
    stats.done += len(chunk)
    if passed + len(keep) >= node.n and node.id in ctx.state.get(STOPS_INPUT, ()):
        ctx.input_stop[0] = True
    ctx.progress(node.id)
    return keep


STOPS_INPUT = "take:stops_input"
"""``ctx.state`` key: the ids of the ``take`` nodes that may stop the input (nothing before them
holds records back), set by the executor."""


@dataclass
class _Buffer:
    rng: random.Random
    records: list[Record] = field(default_factory=list)
    chunk: int = 1
    """The largest chunk seen: the buffer is handed on in chunks of this size at the end."""


def _buffer(node: Shuffle, ctx: RunContext) -> _Buffer:
    state = ctx.state.get(node.id)
    if state is None:
        state = ctx.state[node.id] = _Buffer(random.Random(node.seed))
    assert isinstance(state, _Buffer)
    return state


async def run_shuffle(node: Shuffle, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    state = _buffer(node, ctx)
    state.chunk = max(state.chunk, len(chunk))
    stats.records_in += len(chunk)
    out: list[Record] = []
    held = state.records
    for record in chunk:
        if len(held) < node.buffer:
            held.append(record)
        else:
            k = state.rng.randrange(node.buffer)
            out.append(held[k])
            held[k] = record
    stats.records_out += len(out)
    stats.done += len(out)
    ctx.progress(node.id)
    return out


async def flush_shuffle(node: Shuffle, ctx: RunContext) -> AsyncIterator[list[Record]]:
    """The records still in the buffer, in random order, a chunk at a time."""
    state = _buffer(node, ctx)
    held, state.records = state.records, []
    state.rng.shuffle(held)
    stats = ctx.node(node.id)
    for start in range(0, len(held), state.chunk):
        part = held[start : start + state.chunk]
        stats.records_out += len(part)
        stats.done += len(part)
        ctx.progress(node.id)
        yield part
