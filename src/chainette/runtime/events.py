"""One stream of structured events: what the progress display, ``--json-logs``, a service's
listeners and user middleware all read.

Every event a run or a served trace gives off is an :class:`Event`: a kind, a dict of data, the
trace it belongs to (None in a batch run, and for an engine's events) and the wall-clock time.
A :class:`Middleware` is any callable that takes one.

Where events come from:

- a batch run (``runtime/executor.py`` and the runners through ``RunContext.on_event``):
  ``run_started``, ``node_progress``, ``loop_pass``, ``record_failed``, ``run_finished``;
- the engine broker (``engines/broker.py``): ``engine_started``, ``engine_released``,
  ``engine_failed``;
- a served trace (``runtime/service.py``): its ``TraceEvent`` kinds (``queued``, ``started``,
  ``node_started``, ``node_finished``, ``chunk``, ``output``, ``filtered``, ``failed``,
  ``cancelled``) and the runtime events above that happen inside it, each with its ``trace_id``.

Middleware is called synchronously, on the event loop, in the order given, as each event
happens: it must be quick (a counter, a span, a queue put; hand slow work to a thread). An
exception it raises is logged once per middleware (logger ``chainette.events``) and never stops
the run or the trace; later events still reach it.

Example:
    >>> seen = []
    >>> def count(event: Event) -> None:
    ...     seen.append(event.kind)
    >>> chain.run(rows, "runs/x", middleware=[count])   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Event", "EventHandler", "EventStream", "Middleware"]

_log = logging.getLogger("chainette.events")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in a run or a served trace.

    Attributes:
        kind: What happened (``run_started``, ``node_progress``, ``node_finished``, ...; see the
            module docstring).
        data: The details, by kind (``node``, ``done``, ``message``, ``duration_s``, ...).
        trace_id: The served trace it belongs to; None in a batch run and for engine events.
        at: When, in seconds since the epoch (``time.time()``).
    """

    kind: str
    data: dict[str, Any]
    trace_id: str | None = None
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"kind", "trace_id", "at", **data}`` (``trace_id`` only when set)."""
        head: dict[str, Any] = {"kind": self.kind}
        if self.trace_id is not None:
            head["trace_id"] = self.trace_id
        head["at"] = round(self.at, 4)
        return {**head, **self.data}


class Middleware(Protocol):
    """What receives the event stream: ``middleware(event)``, called on the event loop.

    Keep it quick and never block: it runs between the run's own steps. It may raise: the error
    is logged once for this middleware and the run goes on.

    Example:
        >>> class CountFailures:
        ...     def __init__(self) -> None:
        ...         self.failed = 0
        ...     def __call__(self, event: Event) -> None:
        ...         if event.kind == "record_failed":
        ...             self.failed += 1
    """

    def __call__(self, event: Event) -> None: ...


EventHandler = Callable[[str, dict[str, Any]], None]
"""``handler(kind, data)``: the plain form of a listener (``on_event=``); kinds: run_started,
node_progress, loop_pass, engine_started, engine_released, engine_failed (once per engine that
stopped, with ``message``), record_failed, run_finished."""


class EventStream:
    """Fans each event out: first to a plain ``handler(kind, data)`` (``on_event=``, whose errors
    propagate as before), then to every middleware (whose errors are logged once each, never
    raised).

    An ``EventStream`` is itself a ``handler(kind, data)``, so the runtime emits through it
    without knowing who listens; :meth:`for_trace` gives the same stream with a trace id set.
    """

    __slots__ = ("_failed", "_handler", "_middleware", "trace_id")

    def __init__(
        self,
        handler: EventHandler | None = None,
        middleware: Iterable[Middleware] = (),
        *,
        trace_id: str | None = None,
        _failed: set[int] | None = None,
    ) -> None:
        self._handler = handler
        self._middleware = tuple(middleware)
        self.trace_id = trace_id
        self._failed: set[int] = _failed if _failed is not None else set()

    @property
    def listened(self) -> bool:
        """Whether anyone receives the events (else emitting costs nothing)."""
        return self._handler is not None or bool(self._middleware)

    @property
    def has_middleware(self) -> bool:
        return bool(self._middleware)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self._handler is not None:
            self._handler(kind, data)
        if self._middleware:
            self.send(Event(kind, data, self.trace_id))

    def send(self, event: Event) -> None:
        """Hand ``event`` to every middleware (not to the plain handler)."""
        for middleware in self._middleware:
            try:
                middleware(event)
            except Exception:
                key = id(middleware)
                if key not in self._failed:  # once per middleware: a broken one must not flood the log
                    self._failed.add(key)
                    _log.exception(
                        "Event middleware %r raised on a %r event; the run goes on "
                        "(further errors of this middleware are not logged).",
                        middleware,
                        event.kind,
                    )

    def for_trace(self, trace_id: str, handler: EventHandler | None = None) -> EventStream:
        """The same middleware, for the events of one trace (``handler``: its plain listener)."""
        return EventStream(handler, self._middleware, trace_id=trace_id, _failed=self._failed)
