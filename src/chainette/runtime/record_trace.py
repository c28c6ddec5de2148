"""Per-input timings and usage of one batch run, kept only when asked (``record_trace=True``).

An experiment needs, for each case, when each node worked on it and what its requests cost;
an ordinary batch run needs none of it and pays nothing for it (``RunContext.trace`` and
``RunContext.observe_nodes`` stay None, so the executor and the step runner skip it at one
``is None`` test each).

With ``record_trace`` on, the run's :class:`RecordTrace` is the context's node observer: every
node run, nested ones included, is timed once (``time.monotonic()``), and the span is noted under
the input position (``Record.index``) of each record it ran over. Records go through a chain's
stages each on their own (``runtime/stages.py``), so a node's run is over one record and its span
is that record's own: two records read in one chunk get different spans when their requests take
different times. Only a node that sees several records at once (a stage of sync ``apply`` nodes
run chunk by chunk, a map's children) notes one span for all of them, with ``size`` saying how
many shared it. The step runner notes each answer's tokens under the record's input position,
split into sent and reused (ledger hit or shared duplicate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .context import NodeRun, RunContext
from .records import Record

__all__ = ["MAX_SPANS", "RecordTrace", "Span", "Usage"]

MAX_SPANS = 200
"""Spans kept per input position (a long loop or a wide map stops adding after these)."""


@dataclass(frozen=True)
class Span:
    """A node's work on a record: ``start`` / ``end`` are ``time.monotonic()`` values; ``size``
    is how many records the node ran over at once (1: the span is this record's alone)."""

    node: str
    start: float
    end: float
    size: int


@dataclass
class Usage:
    """One step's tokens for one input position: sent to the engine, or reused (not paid)."""

    prompt: int = 0
    completion: int = 0
    saved_prompt: int = 0
    saved_completion: int = 0
    requests: int = 0
    reused: int = 0


@dataclass
class RecordTrace:
    """What a traced run noted, by input position. ``started`` is the monotonic time the trace
    began (the run's start); ``started_wall`` the same instant as ``time.time()``."""

    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    spans: dict[int, list[Span]] = field(default_factory=dict)
    usage: dict[int, dict[str, Usage]] = field(default_factory=dict)
    dropped: int = 0
    """Spans not kept because a position already had :data:`MAX_SPANS`."""

    async def observe(self, node: Any, chunk: list[Record], ctx: RunContext, run: NodeRun) -> list[Record]:
        """The node observer: time ``run(node, chunk, ctx)`` and note it for each record's position."""
        positions = sorted({r.index for r in chunk})
        start = time.monotonic()
        try:
            return await run(node, chunk, ctx)
        finally:
            span = Span(str(node.id), start, time.monotonic(), len(chunk))
            for index in positions:
                kept = self.spans.setdefault(index, [])
                if len(kept) < MAX_SPANS:
                    kept.append(span)
                else:
                    self.dropped += 1

    def add_usage(self, step_id: str, index: int, prompt: int, completion: int, *, sent: bool) -> None:
        """One answer's tokens for the record at input position ``index`` (called by the step runner)."""
        usage = self.usage.setdefault(index, {}).setdefault(step_id, Usage())
        if sent:
            usage.prompt += prompt
            usage.completion += completion
            usage.requests += 1
        else:
            usage.saved_prompt += prompt
            usage.saved_completion += completion
            usage.reused += 1

    def spans_of(self, index: int) -> list[Span]:
        """The spans noted for input position ``index``, in the order they started."""
        return sorted(self.spans.get(index, []), key=lambda s: (s.start, s.end))
