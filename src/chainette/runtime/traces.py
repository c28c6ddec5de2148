"""A served trace as its readers see it: typed events, replayed to late readers, and a result.

A step that streams sends its answer as ``chunk`` events, each with the new piece only
(``delta``), its place in the node's answer (``seq``, from 0 at each new answer) and whether it
ends the answer (``final``: the last piece of an answer is an empty one with ``final: true``);
an ``apply`` calling ``emit_chunk`` sends its pieces the same way. Nothing
keeps every piece: the replay buffer holds the trace's other events (at most
:data:`REPLAY_LIMIT`) and one snapshot per node of its latest answer, so a reader that joins late
gets ``{"seq", "text", "snapshot": true}`` (the answer so far) in place of the pieces it missed,
then the pieces that follow. A reader that falls far behind gets neighbouring pieces of one
answer joined into one ``delta``. Either way a 20 kB answer in 2,000 pieces costs about 20 kB
per reader, not the square of it.

Trace ids are 1 to 128 characters from ``A-Z a-z 0-9 . _ : -`` (:data:`TRACE_ID`): they go into
HTTP headers, log lines and file rows, where a newline or a quote would forge or break them.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio

from .._errors import InputError
from .events import Event

__all__ = [
    "REPLAY_LIMIT",
    "TERMINAL",
    "TRACE_ID",
    "TraceEvent",
    "TraceHandle",
    "TraceKind",
    "check_deadline",
    "check_trace_id",
]

TraceKind = Literal[
    "queued", "started", "node_started", "node_finished", "chunk", "output", "filtered", "failed", "cancelled"
]
"""What a :class:`TraceEvent` says. ``output``, ``filtered``, ``failed`` and ``cancelled`` end a trace."""

TERMINAL: frozenset[str] = frozenset({"output", "filtered", "failed", "cancelled"})

TRACE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""What a trace id may be: 1 to 128 letters, digits, ``.``, ``_``, ``:`` or ``-``."""

REPLAY_LIMIT = 1000
"""Events a trace keeps for late readers, its streamed answers aside (one snapshot per node).
Past it the oldest are dropped, never the first (``queued``) nor the last."""

COALESCE_AFTER = 256
"""Events waiting for one reader past which its next pieces of an answer are joined into one."""


def check_trace_id(value: object) -> str:
    """``value`` if it is a valid trace id, else :class:`InputError` saying what one is."""
    if isinstance(value, str) and TRACE_ID.fullmatch(value):
        return value
    shown = repr(value)[:60] if isinstance(value, str) else type(value).__name__
    raise InputError(
        f"Trace id {shown} is not allowed: use 1 to 128 characters from A-Z a-z 0-9 . _ : - "
        "(or send none and a new id is made)."
    )


def check_deadline(value: object) -> float | None:
    """``value`` as seconds (a positive finite number) or None, else :class:`InputError`."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        shown = repr(value)[:40] if isinstance(value, int | float | str) else type(value).__name__
        raise InputError(f"deadline_s must be a positive number of seconds, got {shown}.")
    return float(value)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One thing that happened to a trace.

    ``data`` by kind: ``queued``: ``chain`` (its name), ``deadline_s`` when it has one; ``node_started`` / ``node_finished``: ``node`` (and, when finished,
    ``duration_s``; ``output`` when the node produced one value; ``tokens``, the prompt and
    completion tokens of the answers the record got in this node (from the ledger too), when the
    node took one record; ``engine`` for a node that has one; ``failed: True`` when the record
    failed there); ``chunk``: ``node``, ``seq`` (the place of the piece in the node's answer,
    0 at the start of each answer: begin a new text there), ``delta`` (the new text) and
    ``final`` (True on the piece that ends the answer), or, for a reader that joined late,
    ``seq``, ``text`` (the answer up to piece ``seq``), ``final`` and ``snapshot: True``; ``output``: ``output`` (the final value, dumped; a list when the chain
    fanned out); ``failed``: ``node``, ``error_type``, ``message``; ``cancelled``: ``reason``.
    """

    kind: TraceKind
    trace_id: str
    data: dict[str, Any]
    at: float
    """Seconds since the trace was submitted."""
    ts: float = field(default_factory=time.time, compare=False)
    """When, in seconds since the epoch (``time.time()``)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"kind", "trace_id", "at", **data}``."""
        return {"kind": self.kind, "trace_id": self.trace_id, "at": round(self.at, 4), **self.data}

    def to_event(self) -> Event:
        """The same event in the one event stream's form (``at``: wall-clock time)."""
        return Event(self.kind, self.data, self.trace_id, self.ts)


class _Answer:
    """One node's streamed answer so far: the snapshot a late reader gets."""

    __slots__ = ("at", "final", "node", "pieces")

    def __init__(self, node: str) -> None:
        self.node = node
        self.pieces: list[str] = []
        self.at = 0.0
        self.final = False

    def snapshot(self, trace_id: str) -> TraceEvent:
        data = {
            "node": self.node,
            "seq": len(self.pieces) - 1,
            "text": "".join(self.pieces),
            "final": self.final,
            "snapshot": True,
        }
        return TraceEvent("chunk", trace_id, data, self.at)


class _Reader:
    """The events waiting for one reader of a trace."""

    def __init__(self) -> None:
        self.queue: deque[TraceEvent] = deque()
        self.changed = anyio.Event()

    def push(self, event: TraceEvent) -> None:
        queue = self.queue
        if event.kind == "chunk" and len(queue) >= COALESCE_AFTER and event.data["seq"] > 0:
            last = queue[-1]
            if last.kind == "chunk" and last.data["node"] == event.data["node"] and "delta" in last.data:
                data = {
                    **last.data,
                    "delta": last.data["delta"] + event.data["delta"],
                    "final": event.data.get("final", False),
                }
                queue[-1] = TraceEvent("chunk", last.trace_id, data, event.at, event.ts)
                return
        queue.append(event)
        self.changed.set()

    async def wait(self) -> None:
        await self.changed.wait()
        self.changed = anyio.Event()


class TraceOwner(Protocol):
    """What a trace needs of the service that owns it (``ChainService``): no import of it."""

    def _tell(self, event: TraceEvent) -> None: ...

    def cancel(self, trace_id: str, reason: str = ...) -> bool: ...


class TraceHandle:
    """A submitted record: its events (replayed from the start to every reader) and its result."""

    def __init__(self, trace_id: str, service: TraceOwner) -> None:
        self.trace_id = trace_id
        self._service = service
        self._history: list[TraceEvent | _Answer] = []
        self._answers: dict[str, _Answer] = {}
        self._readers: list[_Reader] = []
        self._submitted = time.monotonic()
        self._outcome: Any = None
        self._error: BaseException | None = None
        self.done = anyio.Event()
        """Set when the trace has ended (output, filtered, failed or cancelled)."""
        self.cancel_requested = False
        self.deadline_s: float | None = None
        """Seconds from submission the trace may take (None: no deadline)."""
        self._cancel_reason = "cancelled"
        self._scope: anyio.CancelScope | None = None

    def _emit(self, kind: TraceKind, data: dict[str, Any]) -> TraceEvent:
        event = TraceEvent(kind, self.trace_id, data, time.monotonic() - self._submitted)
        if kind != "chunk":
            self._history.append(event)
            if len(self._history) > REPLAY_LIMIT:
                dropped = self._history.pop(1)
                if isinstance(dropped, _Answer) and self._answers.get(dropped.node) is dropped:
                    del self._answers[dropped.node]
        for reader in self._readers:
            reader.push(event)
        self._service._tell(event)
        return event

    def _emit_piece(self, node: str, delta: str, first: bool, final: bool = False) -> None:
        """A piece of ``node``'s answer (``first``: a new answer starts with it; ``final``: it ends it)."""
        answer = self._answers.get(node)
        if first or answer is None:
            if answer is not None:  # one snapshot per node: its latest answer
                self._history.remove(answer)
            answer = self._answers[node] = _Answer(node)
            self._history.append(answer)
        seq = len(answer.pieces)
        answer.pieces.append(delta)
        answer.final = final
        answer.at = self._emit("chunk", {"node": node, "seq": seq, "delta": delta, "final": final}).at

    async def events(self) -> AsyncGenerator[TraceEvent, None]:
        """Every event of the trace, from the first (a streamed answer so far as one snapshot),
        until the one that ends it."""
        replay = [e if isinstance(e, TraceEvent) else e.snapshot(self.trace_id) for e in self._history]
        reader = _Reader()
        self._readers.append(reader)
        try:
            for event in replay:
                yield event
                if event.kind in TERMINAL:
                    return
            while True:
                while reader.queue:
                    event = reader.queue.popleft()
                    yield event
                    if event.kind in TERMINAL:
                        return
                await reader.wait()
        finally:
            self._readers.remove(reader)

    async def result(self) -> Any:
        """The chain's output for this record (a list when it fanned out; None when filtered).

        Raises:
            TraceFailedError: The record failed (node, kind and message say where and why).
            TraceCancelledError: The trace was cancelled.
        """
        await self.done.wait()
        if self._error is not None:
            raise self._error
        return self._outcome

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel this trace; False when it had already ended."""
        return self._service.cancel(self.trace_id, reason)
