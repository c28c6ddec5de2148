"""One stream of structured events: what the progress display, ``--json-logs``, a service's
listeners and user middleware all read.

Every event a run or a served trace gives off is an :class:`Event`: a kind, a dict of data, the
trace it belongs to (None in a batch run, and for an engine's events) and the wall-clock time.
A :class:`Middleware` is any callable that takes one.

Where events come from:

- a batch run (``runtime/executor.py`` and the runners through ``RunContext.on_event``):
  ``run_started``, ``node_progress``, ``loop_pass``, ``record_failed``, ``run_finished``;
- a record at a step (``runtime/step_runner.py``), each with ``node``, ``record`` (its id),
  ``index`` (its input position) and ``attempt`` (requests made for it at this step so far):
  ``retry`` (an engine error tried again under the step's policy: ``error``, scrubbed, and
  ``delay_s``), ``timeout`` (a call cut by the policy's ``timeout_s``: ``timeout_s``,
  ``duration_s``), ``reask`` (an invalid or cut-off answer asked again: ``error``, scrubbed,
  ``reask``: its number); and from any runner, through ``RunContext.fail`` or a loop that stops,
  ``budget_exceeded`` (the record's deadline or token budget: ``limit``, ``stopped`` when a loop
  ended on it rather than the record failing). These are rare, and go to every listener;
- per record and node, only to listeners that ask for them (:data:`PER_RECORD`, see
  :attr:`Middleware.wants <Middleware>`): ``node_started`` / ``node_finished`` (``node``,
  ``record``, ``index``; finished adds ``duration_s``), once per record for every node it
  enters, nested ones included (a record's span is its chunk's: records still move in chunks),
  and ``attempt`` (one engine call ended for the record: ``attempt``, ``duration_s``,
  ``outcome``: ``stop`` / ``length`` / ``error`` (an error answer, or the call raised) /
  ``timeout``). A 100,000-record chain of three nodes makes 600,000 of the first two;
  a listener that does not name them costs the run nothing for them;
- the engine broker (``engines/broker.py``): ``engine_started``, ``engine_released``,
  ``engine_failed``;
- a served trace (``runtime/service.py``): its ``TraceEvent`` kinds (``queued``, ``started``,
  ``node_started``, ``node_finished``, ``chunk``, ``output``, ``filtered``, ``failed``,
  ``cancelled``) and the runtime events above that happen inside it, each with its ``trace_id``.

A served trace's own ``node_started`` / ``node_finished`` (one record per trace) go to every
middleware, as they always did; :data:`PER_RECORD` applies to what the runtime emits.

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

__all__ = ["PER_RECORD", "Event", "EventHandler", "EventStream", "Middleware"]

_log = logging.getLogger("chainette.events")

PER_RECORD = frozenset({"node_started", "node_finished", "attempt"})
"""Kinds the runtime emits once per record and node (or engine call): a listener receives them
only when its ``wants`` names them, and the runtime builds them only when one does. Everything
else goes to every listener whose ``wants`` is unset or names it."""


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

    A middleware may have a ``wants`` attribute, a set of kinds: it then receives those kinds
    only, and may name the per-record ones (:data:`PER_RECORD`: ``node_started``,
    ``node_finished``, ``attempt``), which a middleware without ``wants`` never receives from a
    batch run. The same holds for a plain ``on_event`` handler with a ``wants`` attribute.

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
stopped, with ``message``), record_failed, retry, timeout, reask, budget_exceeded, run_finished;
and, when its ``wants`` names them, the :data:`PER_RECORD` kinds."""


class EventStream:
    """Fans each event out: first to a plain ``handler(kind, data)`` (``on_event=``, whose errors
    propagate as before), then to every middleware (whose errors are logged once each, never
    raised).

    An ``EventStream`` is itself a ``handler(kind, data)``, so the runtime emits through it
    without knowing who listens; :meth:`for_trace` gives the same stream with a trace id set.
    """

    __slots__ = ("_failed", "_handler", "_middleware", "_routes", "trace_id", "wanted")

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
        self._routes: dict[tuple[str, bool], tuple[bool, tuple[Middleware, ...]]] = {}
        asked = (_wants(x) for x in (handler, *self._middleware) if x is not None)
        self.wanted: frozenset[str] = frozenset().union(*(PER_RECORD & w for w in asked if w is not None))
        """The :data:`PER_RECORD` kinds some listener asks for (the runtime builds no other)."""

    @property
    def listened(self) -> bool:
        """Whether anyone receives the events (else emitting costs nothing)."""
        return self._handler is not None or bool(self._middleware)

    @property
    def displays_shown(self) -> bool:
        """Whether a listener prints the ``show`` events (a ``Show`` node's lines) itself, as the
        CLI's live display does (``displays_shown = True`` on it); else the node prints them."""
        return any(getattr(x, "displays_shown", False) for x in (self._handler, *self._middleware))

    @property
    def has_middleware(self) -> bool:
        return bool(self._middleware)

    def _route(self, kind: str, runtime: bool) -> tuple[bool, tuple[Middleware, ...]]:
        """Who receives ``kind``: (the plain handler?, the middleware), worked out once per kind."""
        route = self._routes.get((kind, runtime))
        if route is None:
            opt_in = runtime and kind in PER_RECORD
            handler = self._handler is not None and _takes(self._handler, kind, opt_in)
            middleware = tuple(m for m in self._middleware if _takes(m, kind, opt_in))
            route = self._routes[kind, runtime] = (handler, middleware)
        return route

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        handler, middleware = self._route(kind, True)
        if handler:
            assert self._handler is not None
            self._handler(kind, data)
        if middleware:
            self._deliver(middleware, Event(kind, data, self.trace_id))

    def send(self, event: Event) -> None:
        """Hand ``event`` (a served trace's own event) to every middleware that takes its kind
        (not to the plain handler)."""
        self._deliver(self._route(event.kind, False)[1], event)

    def _deliver(self, middlewares: tuple[Middleware, ...], event: Event) -> None:
        for middleware in middlewares:
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


def _wants(listener: Any) -> frozenset[str] | None:
    wants = getattr(listener, "wants", None)
    return None if wants is None else frozenset(wants)


def _takes(listener: Any, kind: str, opt_in: bool) -> bool:
    """Whether ``listener`` receives ``kind`` (``opt_in``: a per-record kind, only when named)."""
    wants = _wants(listener)
    return (not opt_in) if wants is None else kind in wants
