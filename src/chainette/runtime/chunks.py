"""Partial output from inside an ``apply``: :func:`emit_chunk` (PenguiFlow's ``emit_chunk``).

While a served trace runs an ``apply`` on its record, the function may call
``chainette.emit_chunk(text)`` any number of times: each call becomes one ``chunk`` event of the
trace (``node``, ``seq`` from 0, ``delta``, ``final``), exactly as a streaming step's pieces do,
so SSE and WebSocket readers and late readers' snapshots need nothing new. ``final=True`` marks
the last piece; a function that emitted pieces and returns without one gets a closing empty
``final`` piece. Sync functions may call it from a worker thread (the piece is handed to the
event loop); async ones from their task.

Where nobody listens (a batch run), the runner binds no emitter and :func:`emit_chunk` returns
at once: a context-variable lookup per call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio.from_thread

__all__ = ["ChunkEmitter", "ChunkHandler", "bound", "emit_chunk"]

ChunkHandler = Callable[[str, str, str, bool, bool], None]
"""``handler(node_id, record_id, delta, first, final)``: one piece of a node's partial output
(``first``: a new output starts with it; ``final``: it ends that output)."""

_CURRENT: ContextVar[ChunkEmitter | None] = ContextVar("chainette_chunk_emitter", default=None)


class ChunkEmitter:
    """Where one record's pieces go while one node works on it."""

    __slots__ = ("ended", "handler", "node_id", "record_id", "sent", "thread")

    def __init__(self, handler: ChunkHandler, node_id: str, record_id: str) -> None:
        self.handler = handler
        self.node_id = node_id
        self.record_id = record_id
        self.sent = 0
        self.ended = False
        self.thread = threading.get_ident()
        """The event loop's thread: a piece from another thread is handed over to it."""

    def emit(self, delta: str, final: bool) -> None:
        if threading.get_ident() == self.thread:
            self._send(delta, final)
        else:  # a sync apply on a worker thread
            with contextlib.suppress(RuntimeError):  # the loop has moved on (an abandoned call)
                anyio.from_thread.run_sync(self._send, delta, final)

    def _send(self, delta: str, final: bool) -> None:
        first = self.sent == 0 or self.ended
        self.sent = 1 if first else self.sent + 1
        self.ended = final
        self.handler(self.node_id, self.record_id, delta, first, final)

    def close(self) -> None:
        """The node is done with the record: end an output left open with an empty final piece."""
        if self.sent and not self.ended:
            self.emit("", True)


def emit_chunk(delta: str, *, final: bool = False) -> None:
    """Send a piece of partial output from inside an ``apply`` to whoever watches the record.

    In a served trace (``ChainService``, ``chainette serve``) each call is a ``chunk`` event
    (``node``, ``seq``, ``delta``, ``final``) on SSE and WebSocket; in a batch run it does nothing.

    Args:
        delta: The new text (only what is new since the last piece).
        final: This piece ends the node's output (else the runner ends it when the function returns).

    Example:
        >>> from chainette import apply, emit_chunk
        >>> def shout(text: str) -> str:
        ...     for word in text.split():
        ...         emit_chunk(word.upper() + " ")
        ...     return text.upper()
        >>> shout("no listener here")
        'NO LISTENER HERE'
    """
    emitter = _CURRENT.get()
    if emitter is None:
        return
    if not isinstance(delta, str):
        raise TypeError(f"emit_chunk sends text: got {type(delta).__name__}; send str(value) or JSON text.")
    emitter.emit(delta, final)


def bound(fn: Callable[..., Any], emitter: ChunkEmitter, is_async: bool) -> Callable[..., Any]:
    """``fn`` with ``emitter`` as the target of :func:`emit_chunk` during each call (closed after)."""
    if is_async:

        async def call_async(*args: Any) -> Any:
            token = _CURRENT.set(emitter)
            try:
                return await fn(*args)
            finally:
                _CURRENT.reset(token)
                emitter.close()

        return call_async

    def call(*args: Any) -> Any:
        token = _CURRENT.set(emitter)
        try:
            return fn(*args)
        finally:
            _CURRENT.reset(token)
            emitter.close()

    return call
