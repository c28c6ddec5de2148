"""Items handed from a worker thread to one task on the event loop, without blocking the thread.

``anyio.from_thread.run_sync`` waits until the loop has run the call: once per answer that is
nothing, once per token it would tie a decode thread to the loop's latency. A :class:`Feed`
appends to a deque and asks the loop to wake its reader "soon" (``call_soon_threadsafe`` on
asyncio, ``run_sync_soon`` on trio), which returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["Feed"]

T = TypeVar("T")


class Feed(Generic[T]):
    """A one-reader queue: :meth:`put` from any thread, :meth:`get` on the loop that made it.

    Example:
        >>> async def main() -> list[int]:  # doctest: +SKIP
        ...     feed = Feed[int]()
        ...     await anyio.to_thread.run_sync(lambda: [feed.put(i) for i in range(3)])
        ...     return [await feed.get() for _ in range(3)]
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()  # append / popleft are atomic: no lock needed
        self._wake: anyio.Event | None = None
        self._soon = _soon_from_thread()

    def put(self, item: T) -> None:
        """Hand ``item`` to the reader (any thread; never blocks). Dropped once the loop is gone."""
        self._items.append(item)
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads any more
            self._soon(self._signal)

    async def get(self) -> T:
        """The next item, waiting for it if need be."""
        while not self._items:
            self._wake = anyio.Event()  # set by _signal, which runs on this loop after a put
            await self._wake.wait()
        await anyio.lowlevel.checkpoint_if_cancelled()
        return self._items.popleft()

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()


def _soon_from_thread() -> Callable[[Callable[[], None]], object]:
    """A function that schedules a call on the current event loop from another thread, at once."""
    with contextlib.suppress(RuntimeError):  # not on asyncio
        return asyncio.get_running_loop().call_soon_threadsafe
    with contextlib.suppress(ImportError, RuntimeError):  # trio, or not
        trio = importlib.import_module("trio")
        soon: Callable[[Callable[[], None]], object] = trio.lowlevel.current_trio_token().run_sync_soon
        return soon
    token = anyio.lowlevel.current_token()  # another back-end: the blocking hand-off still works
    return lambda call: anyio.from_thread.run_sync(call, token=token)
