"""``node_started`` / ``node_finished`` per record in a batch run, for listeners that ask for them.

The events are :data:`~chainette.runtime.events.PER_RECORD` kinds: a run builds them only when a
listener's ``wants`` names one (``RunContext.wants``), and then every node run, nested ones
included, goes through :func:`node_events` as the context's node observer (wrapping the one a
``record_trace=True`` run already has). Records still move through a node in chunks, so the
records of one chunk start and finish a node together: ``duration_s`` is the chunk's time there.
Like a traced run, a streaming node's passes (``samples > 1``) are gathered before going on.
"""

from __future__ import annotations

import time
from typing import Any

from .context import NodeObserver, NodeRun, RunContext
from .records import Record

__all__ = ["node_events"]


def node_events(inner: NodeObserver | None) -> NodeObserver:
    """A node observer that emits ``node_started`` / ``node_finished`` for each record of the
    chunk (those a listener wants) around ``inner`` (or the node's runner)."""

    async def observe(node: Any, chunk: list[Record], ctx: RunContext, run: NodeRun) -> list[Record]:
        node_id, emit = str(node.id), ctx.on_event
        if ctx.wants("node_started"):
            for record in chunk:
                emit("node_started", {"node": node_id, "record": record.id, "index": record.index})
        start = time.monotonic()
        try:
            return await (run(node, chunk, ctx) if inner is None else inner(node, chunk, ctx, run))
        finally:
            if ctx.wants("node_finished"):
                took = round(time.monotonic() - start, 6)
                for record in chunk:
                    emit(
                        "node_finished",
                        {"node": node_id, "record": record.id, "index": record.index, "duration_s": took},
                    )

    return observe
