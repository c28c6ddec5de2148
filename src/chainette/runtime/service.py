"""A chain served one record at a time: engines warm, a trace per submission, events as they happen.

``ChainService`` is the long-lived half of the runtime (PenguiFlow's flow): it checks the chain
once, opens the ledger once and keeps the engines started (no per-run release countdown), then
runs each submitted record as a *trace* through the same node runners a batch run uses. A trace
has an id, an optional deadline, an event stream and a result; cancelling it stops its queued
and in-flight work (an HTTP request is closed, llama.cpp decoding stops at the next token)
without touching the others. Requests of concurrent traces share the engines' limits, so the
embedded engine decodes them together, and a repeated request is answered from the ledger.

What the runners write goes to a per-trace :class:`RecordSink`: it tells the trace's listeners
and, with ``record_to=``, passes every row on to one run folder laid out like a batch run's.

Example:
    >>> async with ChainService(chain) as service:                     # doctest: +SKIP
    ...     trace = await service.submit({"question": "What is 2+2?"})
    ...     async for event in trace.events():
    ...         print(event.kind, event.data)
    ...     answer = await trace.result()
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from pydantic import ValidationError

from .._errors import (
    ChainDefinitionError,
    InputError,
    ServiceError,
    ServiceFullError,
    TraceCancelledError,
    TraceFailedError,
)
from ..engines.base import Engine
from ..engines.broker import EngineBroker
from ..engines.registry import is_available
from ..engines.secrets import scrub_strings
from ..graph.chain import ChainGraph
from ..io.writer import RunWriter
from .budgets import budget_error
from .context import ChunkHandler, DeltaHandler, EventHandler, NodeObserver, NodeRun, RunContext
from .dispatch import missing_runners, run_node
from .events import EventStream, Middleware
from .executor import flatten
from .records import Record, coerce, dump, input_mismatch, type_label
from .requests import CacheMode, RequestCache
from .run_meta import StartNotes, _start_warnings
from .service_recording import Recording, TraceSink, open_recording
from .traces import TERMINAL as TERMINAL  # re-exported: the CLI and the OpenTelemetry middleware use it
from .traces import TraceEvent, TraceHandle, TraceKind, check_deadline, check_trace_id

__all__ = ["ChainService", "TraceEvent", "TraceHandle", "TraceKind"]

_log = logging.getLogger("chainette")

DEADLINE_GRACE = 0.1
"""Seconds past a trace's deadline before the service stops it from outside (the runners, which
cut an engine call at the record's deadline and fail it naming the node, go first)."""


class ChainService:
    """Serve ``chain``: submit records from async code, each a trace with events and a result.

    Args:
        chain: The chain (checked on entry, before any engine starts).
        ledger: The request ledger (SQLite; default ``$CHAINETTE_LEDGER`` or ``.chainette/ledger.sqlite``).
        cache: ``use`` / ``refresh`` / ``off``, as in a batch run.
        capacity: Traces the service holds at once (queued + running); a submission beyond it waits
            for room (``when_full="wait"``) or is refused with :class:`ServiceFullError` (``"refuse"``).
        concurrency: Traces running at once; the others are queued (a cancelled queued trace never runs).
        when_full: ``"wait"`` or ``"refuse"``.
        deadline_s: Default deadline of a trace, in seconds from submission (None: none).
        record_to: A run folder to record every finished trace in (step folders, ``flattened/``,
            ``failures.jsonl``, ``graph.json``, ``metadata.json`` at close), like a batch run's.
        overwrite: Replace ``record_to`` if it holds an earlier run.
        warm: Start every engine the chain uses on entry (otherwise on the first request).
        stream_tokens: Steps whose engine streams (``llama_cpp``, ``openai``, ``fake``) send
            their requests through ``Engine.stream`` and every piece becomes a ``chunk`` event.
        on_event: ``handler(event: TraceEvent)`` for every trace's events.
        on_run_event: ``handler(kind, data)`` for the runtime's own events (engines started,
            progress; inside a trace with ``trace_id`` in ``data``).
        middleware: Receive both as :class:`~chainette.runtime.events.Event` s, in one stream,
            each with its trace id (None for an engine's events); called after the two above,
            quick, on the event loop, and never fatal (see ``runtime/events.py``).
    """

    def __init__(
        self,
        chain: ChainGraph,
        *,
        ledger: str | Path | None = None,
        cache: CacheMode = "use",
        capacity: int = 1024,
        concurrency: int = 64,
        when_full: Literal["wait", "refuse"] = "wait",
        deadline_s: float | None = None,
        record_to: str | Path | None = None,
        overwrite: bool = False,
        warm: bool = True,
        stream_tokens: bool = True,
        on_event: Callable[[TraceEvent], None] | None = None,
        on_run_event: EventHandler | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        if capacity < 1 or concurrency < 1:
            raise ValueError(f"capacity and concurrency must be >= 1, got {capacity} and {concurrency}.")
        if when_full not in ("wait", "refuse"):
            raise ValueError(f"when_full must be 'wait' or 'refuse', got {when_full!r}.")
        self.chain = chain
        self.capacity = capacity
        self.when_full = when_full
        self.deadline_s = deadline_s
        self._ledger, self._cache_mode = ledger, cache
        self._record_to, self._overwrite, self._warm = record_to, overwrite, warm
        self._on_event = on_event
        self._stream_tokens = stream_tokens
        self._on_run_event = on_run_event
        self._events = EventStream(on_run_event, middleware)
        """The runtime's events outside any trace (engines; the recording's ``run_finished``)."""
        self._room = anyio.Semaphore(capacity)
        self._running = anyio.CapacityLimiter(concurrency)
        self._traces: dict[str, TraceHandle] = {}
        self._count = 0
        self._tg: TaskGroup | None = None
        self._ctx: RunContext | None = None
        self._recording: Recording | None = None
        self._stack = AsyncExitStack()
        self.warnings: list[str] = []
        """Said (logged) at the start: the check's warnings, engines a warmup server replaces."""
        self.counts: Counter[str] = Counter()
        """Traces by how they ended (``output``, ``filtered``, ``failed``, ``cancelled``)."""

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ChainService:
        chain = self.chain
        report = chain.check(engine_known=is_available)
        report.raise_for_errors()
        notes = _start_warnings(chain, report)
        problems = missing_runners(chain.walk())
        problems += [
            f"{n.kind} {n.id!r} needs the whole input stream; a served chain takes one record at a time."
            for n in chain.iter_nodes()
            if n.whole_stream
        ]
        if problems:
            raise ChainDefinitionError("\n".join(problems))
        if self._record_to is None:  # a Sink writes through the run folder's writer: none, no file
            notes[0].extend(_unwritten_sinks(chain))
        self.warnings = notes[0]
        for warning in self.warnings:  # said once, as a batch run says them at its start
            _log.warning(warning)
        users = Counter(n.engine_name for n in chain.iter_nodes() if n.engine_name is not None)
        cache = RequestCache.open(self._ledger, self._cache_mode if users else "off")
        stack = AsyncExitStack()
        try:
            writer = self._open_recording(cache, notes)
            broker = EngineBroker(users, on_event=self._events, idle_timeout=None)
            self._ctx = RunContext(writer or TraceSink(None), broker, self._events, cache)
            await stack.enter_async_context(broker)
            # entered after the broker, so it ends (every trace done) before the engines close
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            if self._warm:
                for name in users:
                    await broker.get(name)
        except BaseException:
            await stack.aclose()
            cache.close()
            if self._recording is not None:
                self._recording.writer.release()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Cancel every trace still open, release the engines, close the ledger and the recording."""
        assert self._ctx is not None
        ctx = self._ctx
        for trace_id in list(self._traces):
            self.cancel(trace_id, "the service is closing")
        try:
            await self._stack.__aexit__(kind, exc, tb)  # the traces end (cancelled), then the engines
            if self._recording is not None:
                with anyio.CancelScope(shield=True):
                    await self._recording.finish(self.chain, ctx, kind is None, self.counts)
        finally:
            ctx.cache.close()
            if self._recording is not None:
                self._recording.writer.release()
            self._tg = None

    def _open_recording(self, cache: RequestCache, notes: StartNotes) -> RunWriter | None:
        if self._record_to is None:
            return None
        self._recording = open_recording(self.chain, Path(self._record_to), self._overwrite, cache, notes)
        return self._recording.writer

    # ---------------------------------------------------------------- traces

    async def submit(
        self, value: Any, *, trace_id: str | None = None, deadline_s: float | None = None
    ) -> TraceHandle:
        """Start a trace for ``value`` (a dict or an instance of the chain's input model).

        Args:
            trace_id: Its id (default: a new random one): 1 to 128 of ``A-Z a-z 0-9 . _ : -``,
                not in use.
            deadline_s: Seconds from now after which the trace fails (default: the service's):
                a positive finite number.

        Raises:
            InputError: ``value`` does not fit the chain's input model (``__cause__`` is the
                pydantic ``ValidationError``, whose ``errors()`` list the fields), the trace id is
                not 1 to 128 of ``A-Z a-z 0-9 . _ : -``, or ``deadline_s`` is not a positive number.
            ServiceError: The trace id is in use by an open trace.
            ServiceFullError: The service is full and ``when_full="refuse"``.
        """
        if self._tg is None or self._ctx is None:
            raise ServiceError(
                "The service is not running: use `async with ChainService(chain) as service:`."
            )
        # everything is checked before a slot is taken: a refused submission holds nothing
        model = self.chain.input_type  # a model, a union of models, or None
        try:
            coerced = coerce(model, value)
        except ValidationError as exc:
            raise InputError(
                f"The submission does not fit the chain's input model {type_label(model)} "
                f"({input_mismatch(model, exc)}): {exc.errors(include_url=False)}"
            ) from exc
        trace_id = uuid.uuid4().hex if trace_id is None else check_trace_id(trace_id)
        limit = check_deadline(deadline_s)
        limit = limit if limit is not None else self.deadline_s
        self._check_free(trace_id)
        if self.when_full == "refuse":
            try:
                self._room.acquire_nowait()
            except anyio.WouldBlock:
                raise ServiceFullError(
                    f"The service is full ({self.capacity} traces); retry later or raise `capacity`."
                ) from None
        else:
            await self._room.acquire()
        try:
            self._check_free(trace_id)  # again: another submission may have taken it while this one waited
            handle = self._start(trace_id, coerced, limit)
        except BaseException:
            self._room.release()
            raise
        return handle

    def _check_free(self, trace_id: str) -> None:
        if trace_id in self._traces:
            raise ServiceError(f"Trace id {trace_id!r} is already in use by a trace that has not ended.")

    def _start(self, trace_id: str, coerced: Any, limit: float | None) -> TraceHandle:
        """The trace, registered and started (the caller holds its slot, released when it ends)."""
        assert self._tg is not None
        handle = TraceHandle(trace_id, self)
        handle.deadline_s = limit
        record = Record(trace_id, self._count, coerced, {"input": coerced})
        deadline = math.inf
        if limit is not None:
            # the runners cut engine calls at the record's deadline and fail it there, naming the node;
            # the trace's own deadline, a moment later, stops whatever else is still running
            record.deadline = time.monotonic() + limit
            deadline = anyio.current_time() + limit + DEADLINE_GRACE
        self._traces[trace_id] = handle
        try:
            handle._emit(
                "queued", {"chain": self.chain.name, **({"deadline_s": limit} if limit is not None else {})}
            )
        except BaseException:  # an on_event handler that raised: no trace, as if never submitted
            del self._traces[trace_id]
            raise
        self._count += 1
        if self._recording is not None:
            self._recording.counts["records_in"] += 1
        self._tg.start_soon(self._run_trace, handle, record, deadline)  # from here, it releases the slot
        return handle

    def cancel(self, trace_id: str, reason: str = "cancelled") -> bool:
        """Cancel a trace by id: its queued work is dropped, its in-flight work stopped. False
        when no such trace is open (unknown, or already ended)."""
        handle = self._traces.get(trace_id)
        if handle is None or handle.done.is_set():
            return False
        handle.cancel_requested = True
        handle._cancel_reason = reason
        if handle._scope is not None:
            handle._scope.cancel()
        return True

    async def engine(self, name: str) -> Engine:
        """The running engine ``name`` (started now if it is not yet): for its numbers and state."""
        if self._ctx is None:
            raise ServiceError("The service is not running.")
        handle = await self._ctx.broker.get(name)
        return handle.engine

    def trace(self, trace_id: str) -> TraceHandle | None:
        """The open trace with this id, if any."""
        return self._traces.get(trace_id)

    @property
    def open_traces(self) -> int:
        return len(self._traces)

    async def _run_trace(self, handle: TraceHandle, record: Record, deadline: float) -> None:
        assert self._ctx is not None
        sink = TraceSink(self._recording.writer if self._recording is not None else None)
        ctx = replace(
            self._ctx,
            writer=sink,
            on_event=self._run_event_for(handle),
            on_delta=self._delta_for(handle) if self._stream_tokens else None,
            on_chunk=self._chunk_for(handle),
            record_deadline_s=handle.deadline_s,
        )
        timed_out = False
        try:
            with anyio.CancelScope() as scope:
                handle._scope = scope
                if handle.cancel_requested:
                    scope.cancel()
                with anyio.CancelScope(deadline=deadline) as timer:
                    async with self._running:
                        handle._emit("started", {})
                        records = await self._run_nodes(handle, [record], ctx, sink)
                timed_out = timer.cancelled_caught
            if handle.cancel_requested:
                self._end(handle, "cancelled", {"reason": handle._cancel_reason})
            elif timed_out:  # past the deadline in work the runners do not cut (a slow apply)
                error = budget_error(
                    record, "deadline", f"Trace {handle.trace_id!r}", "deadline", handle.deadline_s
                )
                ctx.fail(record, error)
                self._end_failed(handle, "deadline", error.kind, error.message)
            else:
                self._settle(handle, records, sink)
        except Exception as exc:  # a bug or an engine that raised past the runners: this trace only
            self._end_failed(handle, "service", type(exc).__name__, f"{type(exc).__name__}: {exc}")
        finally:
            if not handle.done.is_set():  # cancelled from outside (the service closing)
                self._end(handle, "cancelled", {"reason": "the service is closing"})
            self._traces.pop(handle.trace_id, None)
            self._room.release()

    async def _run_nodes(
        self, handle: TraceHandle, chunk: list[Record], ctx: RunContext, sink: TraceSink
    ) -> list[Record]:
        ctx = replace(ctx, observe_nodes=self._observer(handle, sink))
        for node in self.chain.items:
            if not chunk:
                break
            chunk = await run_node(node, chunk, ctx)
        for record in chunk:
            ctx.writer.add_flattened(flatten(record))
        await ctx.writer.maybe_flush()
        return chunk

    @staticmethod
    def _observer(handle: TraceHandle, sink: TraceSink) -> NodeObserver:
        """``node_started`` / ``node_finished`` around every node of the trace, nested ones too."""

        async def observe(node: Any, chunk: list[Record], ctx: RunContext, run: NodeRun) -> list[Record]:
            started = time.monotonic()
            handle._emit("node_started", {"node": node.id})
            entering, failures = chunk[0] if len(chunk) == 1 else None, len(sink.failures)
            tokens_before = entering.tokens if entering is not None else 0
            out = await run(node, chunk, ctx)
            data: dict[str, Any] = {"node": node.id, "duration_s": round(time.monotonic() - started, 4)}
            if len(out) == 1:
                data["output"] = dump(out[0].value)
            if entering is not None:  # steps count in place: the record that left, or the one that came
                data["tokens"] = (out[0] if out else entering).tokens - tokens_before
            if node.engine_name is not None:
                data["engine"] = node.engine_name
            if not out and len(sink.failures) > failures:
                data["failed"] = True
            handle._emit("node_finished", data)
            return out

        return observe

    def _settle(self, handle: TraceHandle, records: list[Record], sink: TraceSink) -> None:
        if records:
            values = [r.value for r in records]
            handle._outcome = values[0] if len(values) == 1 else values
            dumped = [dump(v) for v in values]
            self._end(handle, "output", {"output": dumped[0] if len(dumped) == 1 else dumped})
        elif sink.failures:
            row = sink.failures[0]
            self._end_failed(
                handle, str(row.get("node", "")), str(row.get("error_type", "")), str(row["message"])
            )
        else:
            self._end(handle, "filtered", {})

    def _end_failed(self, handle: TraceHandle, node: str, error_type: str, message: str) -> None:
        handle._error = TraceFailedError(
            message, trace_id=handle.trace_id, node_id=node, error_type=error_type
        )
        self._end(handle, "failed", {"node": node, "error_type": error_type, "message": message})

    def _end(self, handle: TraceHandle, kind: TraceKind, data: dict[str, Any]) -> None:
        if handle.done.is_set():
            return
        if kind == "cancelled":
            handle._error = TraceCancelledError(f"Trace {handle.trace_id!r} was cancelled: {data['reason']}.")
        self.counts[kind] += 1
        handle._emit(kind, scrub_strings(data))
        handle.done.set()

    def _run_event_for(self, handle: TraceHandle) -> EventHandler:
        """The runtime's events of one trace go to the service's listeners, tagged with the trace."""
        tell = self._on_run_event
        trace_id = handle.trace_id
        handler: EventHandler | None = None
        if tell is not None:

            def handler(kind: str, data: dict[str, Any]) -> None:
                tell(kind, {**data, "trace_id": trace_id})

        return self._events.for_trace(trace_id, handler)

    @staticmethod
    def _delta_for(handle: TraceHandle) -> DeltaHandler:
        """Pieces of a step's answer become the trace's ``chunk`` events: the new text only."""

        def handler(node_id: str, record_id: str, delta: str, text: str, final: bool) -> None:
            handle._emit_piece(node_id, delta, first=len(text) == len(delta), final=final)

        return handler

    @staticmethod
    def _chunk_for(handle: TraceHandle) -> ChunkHandler:
        """Pieces an ``apply`` sends with ``emit_chunk`` become the trace's ``chunk`` events."""

        def handler(node_id: str, record_id: str, delta: str, first: bool, final: bool) -> None:
            handle._emit_piece(node_id, delta, first=first, final=final)

        return handler

    def _tell(self, event: TraceEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if self._events.has_middleware:
            self._events.send(event.to_event())


def _unwritten_sinks(chain: ChainGraph) -> list[str]:
    """A start warning per node that writes to a file (a ``Sink``), for a service that records to
    no run folder: its rows go nowhere."""
    return [
        f"{node.id}: this {node.kind} writes to {node.writes_to!r} only when the service records to a "
        "run folder; served without one, it writes nothing. Pass record_to= to ChainService "
        "(chainette serve --record-to DIR), or remove the node."
        for node in chain.iter_nodes()
        if node.writes_to is not None
    ]
