"""Engine lifecycle for one run: start on first use, share, release deterministically.

The runtime tells the broker up front how many nodes use each engine. An engine starts when
the first of them asks for it, is shared by all of them (branches included), and is closed as
soon as the last of them has finished, or at the end of the run, whichever comes first.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio

from .base import Engine
from .registry import EngineConfig, create_engine, get_engine_config

__all__ = ["EngineBroker"]


class EngineBroker:
    """Starts engines lazily and releases each one when no pending node needs it."""

    def __init__(
        self,
        users: Counter[str],
        *,
        factory: Callable[[EngineConfig], Engine] = create_engine,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._remaining = Counter(users)
        self._factory = factory
        self._engines: dict[str, Engine] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._on_event = on_event or (lambda kind, data: None)
        self.described: dict[str, dict[str, Any]] = {}
        """What each started engine said about itself (for metadata.json)."""

    async def get(self, name: str) -> Engine:
        """The started engine ``name``; starts it on first call."""
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        lock = self._locks.setdefault(name, anyio.Lock())
        async with lock:
            engine = self._engines.get(name)
            if engine is None:
                config = get_engine_config(name)
                started = time.perf_counter()
                engine = self._factory(config)
                await engine.start()
                self._engines[name] = engine
                self.described[name] = {**engine.describe(), "options": config.public_options()}
                self._on_event(
                    "engine_started", {"engine": name, "seconds": round(time.perf_counter() - started, 3)}
                )
        return engine

    async def node_done(self, name: str) -> None:
        """A node that uses ``name`` has finished all its records."""
        self._remaining[name] -= 1
        if self._remaining[name] <= 0:
            await self._release(name)

    async def aclose(self) -> None:
        """Release every engine still running (end of run, error or cancellation)."""
        with anyio.CancelScope(shield=True):
            for name in list(self._engines):
                await self._release(name)

    @property
    def running(self) -> list[str]:
        """Names of the engines started and not yet released."""
        return list(self._engines)

    async def _release(self, name: str) -> None:
        engine = self._engines.pop(name, None)
        if engine is not None:
            await engine.close()
            self._on_event("engine_released", {"engine": name})
