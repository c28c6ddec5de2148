"""Engine lifecycle for one run: start on first use, share, release deterministically, evict when idle.

The runtime tells the broker up front how many nodes use each engine. An engine starts when
the first of them asks for it, is shared by all of them (branches included), and is closed as
soon as the last of them has finished, or at the end of the run, whichever comes first.

Two more rules:

- **Idle eviction.** An engine with no call in flight that has not been used for
  ``idle_timeout`` seconds (broker argument, or the engine option ``idle_timeout``) is closed;
  it starts again on its next use. Checked on every use, and by a background task while the
  broker is entered as an async context manager (``async with broker: ...``).
- **Exclusive engines** (``Engine.exclusive``, e.g. vLLM on a GPU) are never running together:
  before one starts, the others are released, after their calls in flight have finished.
- **Stopped engines.** An engine that sets ``fatal_error`` (the server refused its credentials)
  is reported once (an ``engine_failed`` event, ``error`` in its description) and not called
  again in this run, even after a restart: every later request is answered with the reason.

:meth:`EngineBroker.get` returns a handle that counts calls in flight (so eviction and
exclusive switches never close an engine under a running ``generate``) and that restarts the
engine if it was evicted meanwhile. :meth:`EngineBroker.lease` is the explicit form.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from .base import ChatRequest, Completion, Engine
from .registry import EngineConfig, create_engine, get_engine_config
from .secrets import scrub, scrub_text

T = TypeVar("T")

__all__ = ["DEFAULT_IDLE_TIMEOUT", "EngineBroker", "EngineHandle"]

DEFAULT_IDLE_TIMEOUT = 180.0
"""Seconds an unused engine stays loaded (the seed's 180 s)."""


class EngineBroker:
    """Starts engines lazily, shares them, and releases each one when no pending node needs it.

    Args:
        users: How many nodes use each engine name.
        factory: Builds an engine from its config (tests inject their own).
        on_event: ``handler(kind, data)`` for ``engine_started`` / ``engine_released`` / ``engine_failed``.
        idle_timeout: Default idle eviction delay in seconds (``None`` or ``inf``: never).
    """

    def __init__(
        self,
        users: Counter[str],
        *,
        factory: Callable[[EngineConfig], Engine] = create_engine,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._remaining = Counter(users)
        self._factory = factory
        self._engines: dict[str, Engine] = {}
        self._timeouts: dict[str, float] = {}
        self._in_flight: Counter[str] = Counter()
        self._last_used: dict[str, float] = {}
        self._changed = anyio.Condition()
        self._locks: dict[str, anyio.Lock] = {}
        self._starting: dict[str, anyio.Event] = {}
        self._exclusive_start = anyio.Lock()
        self._switching = 0  # tasks waiting to start an exclusive engine: new calls to the running one wait
        self._on_event = on_event or (lambda kind, data: None)
        self._idle_timeout = math.inf if idle_timeout is None else idle_timeout
        self._clock = clock
        self._tg: TaskGroup | None = None
        self.failed: dict[str, str] = {}
        """Engines stopped for good in this run (``Engine.fatal_error``), with the reason."""
        self._stopped: dict[str, Engine] = {}
        self._handles: dict[str, EngineHandle] = {}
        self.described: dict[str, dict[str, Any]] = {}
        """What each started engine said about itself, and its options, scrubbed of credentials (for
        metadata.json)."""

    async def __aenter__(self) -> EngineBroker:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._evict_loop)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(kind, exc, tb)
            self._tg = None
        await self.aclose()

    async def get(self, name: str) -> EngineHandle:
        """A handle on engine ``name``, started on first call. Its ``generate`` counts as in flight."""
        stopped = self._stopped.get(name)
        if stopped is not None:  # never started again: its handle answers with the reason
            return EngineHandle(self, name, stopped)
        handle = self._handles.get(name)
        if handle is not None and self._engines.get(name) is handle.engine and not self._has_idle():
            return handle  # the usual case, once per request: the engine runs, nothing to evict
        async with self.lease(name) as engine:
            handle = self._handles[name] = EngineHandle(self, name, engine)
            return handle

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Engine]:
        """Use engine ``name`` for a while: it is started if needed and not closed until the block ends.

        Example:
            >>> async with broker.lease("local") as engine:          # doctest: +SKIP
            ...     completions = await engine.generate(requests)
        """
        engine = self._running(name) or await self._acquire(name)
        try:
            yield engine
        finally:
            self._in_flight[name] -= 1
            self._last_used[name] = self._clock()
            if self._changed.statistics().tasks_waiting:  # someone waits for a call to end
                with anyio.CancelScope(shield=True):
                    async with self._changed:
                        self._changed.notify_all()

    def spawn(self, fn: Callable[[T], Coroutine[Any, Any, None]], arg: T) -> bool:
        """Start ``fn(arg)`` in the broker's task group (it lives while the broker is entered: the
        run); False when the broker is not entered (nothing started)."""
        if self._tg is None:
            return False
        self._tg.start_soon(fn, arg)
        return True

    async def node_done(self, name: str) -> None:
        """A node that uses ``name`` has finished all its records."""
        self._remaining[name] -= 1
        if self._remaining[name] <= 0:
            async with self._changed:
                await self._wait_idle(name)
                await self._release(name)

    async def aclose(self) -> None:
        """Release every engine still running (end of run, error or cancellation)."""
        with anyio.CancelScope(shield=True):
            for name in list(self._engines):
                await self._release(name)

    async def evict_idle(self) -> list[str]:
        """Close the engines idle for longer than their timeout; returns their names."""
        async with self._changed:
            now = self._clock()
            idle = [
                name
                for name in self._engines
                if self._in_flight[name] == 0 and now - self._last_used.get(name, now) >= self._timeouts[name]
            ]
            released = []
            for name in idle:
                if self._in_flight[name] == 0:  # not taken again while the one before was closing
                    await self._release(name, reason="idle")
                    released.append(name)
            return released

    def _has_idle(self) -> bool:
        now = self._clock()
        return any(
            self._in_flight[n] == 0 and now - self._last_used.get(n, now) >= self._timeouts[n]
            for n in self._engines
        )

    def stopped(self, name: str, engine: Engine) -> None:
        """Note that ``engine`` (named ``name``) can serve nothing more, if it says so; reported once."""
        if engine.fatal_error is None or name in self.failed:
            return
        reason = scrub_text(engine.fatal_error)
        self.failed[name] = reason
        self._stopped[name] = engine
        self.described.setdefault(name, {})["error"] = reason
        self._on_event("engine_failed", {"engine": name, "message": reason})

    @property
    def running(self) -> list[str]:
        """Names of the engines started and not yet released."""
        return list(self._engines)

    def _running(self, name: str) -> Engine | None:
        """The usual case, taken without a lock or a checkpoint: ``name`` is running, no switch
        to another exclusive engine pending, nothing idle to evict. (Who releases an engine checks
        that it has no call in flight and pops it in one step, with no checkpoint in between.)"""
        engine = self._engines.get(name)
        if engine is None or (self._switching and engine.exclusive) or self._has_idle():
            return None
        self._in_flight[name] += 1
        return engine

    async def _acquire(self, name: str) -> Engine:
        """Start ``name`` if needed. The calls that come while one starts it wait for that start
        and then all go on in the same moment, in the order they came: behind the lock they would
        go one per loop turn, and calls that came later (on the fast path) would get ahead of them
        at the engine's slots (the first records of a run sent last)."""
        starting = self._starting.get(name)
        if starting is None and name not in self._engines:
            self._starting[name] = anyio.Event()  # claimed before any checkpoint
            try:
                return await self._acquire_locked(name)
            finally:
                self._starting.pop(name).set()
        if starting is not None:
            await starting.wait()
            engine = self._running(name)
            if engine is not None:
                return engine
        return await self._acquire_locked(name)

    async def _acquire_locked(self, name: str) -> Engine:
        if self._has_idle():
            await self.evict_idle()
        lock = self._locks.setdefault(name, anyio.Lock())
        async with lock:  # one starter per engine; the others wait for it
            async with self._changed:
                while self._switching and name in self._engines and self._engines[name].exclusive:
                    await self._changed.wait()  # an exclusive switch is pending: let in-flight calls drain
                engine = self._engines.get(name)
                if engine is not None:
                    self._in_flight[name] += 1
                    return engine
            config = get_engine_config(name)
            engine = self._factory(config)
            started = time.perf_counter()
            # Exclusive engines start one at a time, after the others have been released.
            async with self._exclusive_start if engine.exclusive else contextlib.nullcontext():
                if engine.exclusive:
                    await self._make_room(name)
                await self._start(engine)
                async with self._changed:
                    self._engines[name] = engine
                    self._in_flight[name] += 1
                    self._last_used[name] = self._clock()
                    self._timeouts[name] = float(config.options.get("idle_timeout", self._idle_timeout))
                    self.described[name] = {**scrub(engine.describe()), "options": config.public_options()}
                    self._changed.notify_all()
            self._on_event(
                "engine_started", {"engine": name, "seconds": round(time.perf_counter() - started, 3)}
            )
            return engine

    @staticmethod
    async def _start(engine: Engine) -> None:
        try:
            await engine.start()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await engine.close()  # free what a half-done start took; the start error is the news
            raise

    async def _make_room(self, name: str) -> None:
        """Release every other running exclusive engine, once its calls in flight have finished."""
        async with self._changed:
            self._switching += 1
            try:
                while others := [n for n, e in self._engines.items() if e.exclusive and n != name]:
                    for other in others:
                        await self._wait_idle(other)
                        await self._release(other, reason="exclusive")
            finally:
                self._switching -= 1
                self._changed.notify_all()

    async def _wait_idle(self, name: str) -> None:
        """Wait (holding ``_changed``) until ``name`` has no call in flight."""
        while self._in_flight[name] > 0:
            await self._changed.wait()

    async def _release(self, name: str, reason: str = "done") -> None:
        engine = self._engines.pop(name, None)
        if engine is not None:
            if name in self.described:  # what the engine learned while running (e.g. the dialect that worked)
                self.described[name] = {**self.described[name], **scrub(engine.describe())}
            with anyio.CancelScope(shield=True):
                await engine.close()
            self._on_event("engine_released", {"engine": name, "reason": reason})

    async def _evict_loop(self) -> None:
        while True:
            timeouts = [self._timeouts[n] for n in self._engines] or [self._idle_timeout]
            await anyio.sleep(min(max(0.01, min(timeouts) / 4), 1.0))
            await self.evict_idle()


class EngineHandle(Engine):
    """What :meth:`EngineBroker.get` returns: the engine's numbers, and ``generate`` / ``stream`` under a lease.

    Holding a handle does not keep the engine loaded; each ``generate`` call (each ``stream``,
    until it ends or is closed) does, and restarts the engine if it was evicted in between.
    """

    def __init__(self, broker: EngineBroker, name: str, engine: Engine) -> None:
        self.name = name
        self.engine = engine
        """The engine that was running when the handle was made (for its numbers and description)."""
        self._broker = broker
        self.backend = engine.backend  # type: ignore[misc]
        self.max_batch_size = engine.max_batch_size
        self.max_concurrency = engine.max_concurrency
        self.gather_s = engine.gather_s
        self.exclusive = engine.exclusive
        self.supports_streaming = engine.supports_streaming

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        reason = self._broker.failed.get(self.name)
        if reason is not None:  # stopped earlier in this run: answer without starting or sending
            return [Completion(text=reason, finish_reason="error", attempts=0) for _ in requests]
        async with self._broker.lease(self.name) as engine:
            completions = await engine.generate(requests)
            self._broker.stopped(self.name, engine)
            return completions

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | Completion, None]:
        reason = self._broker.failed.get(self.name)
        if reason is not None:
            yield Completion(text=reason, finish_reason="error", attempts=0)
            return
        async with self._broker.lease(self.name) as engine, aclosing(engine.stream(request)) as items:
            async for item in items:
                yield item
            self._broker.stopped(self.name, engine)

    def describe(self) -> dict[str, Any]:
        return self.engine.describe()
