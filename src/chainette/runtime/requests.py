"""Between the step runner and the engines: the ledger, and one send per distinct request.

``RequestCache.lookup`` answers what the ledger already holds (one indexed read per chunk, on
the loop); ``RequestCache.claim`` makes sure that of several identical requests in flight at once
(duplicate prompts in one run, across chunks and branches) only one reaches the engine, the
others wait for its answer; ``RequestCache.store`` commits answers as soon as they arrive, so a
crash loses nothing already paid for. Error answers are never stored: a rerun sends them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio

from ..engines.base import Completion
from ..ledger.store import Ledger, StoredAnswer, StoredFailure, default_ledger_path

__all__ = ["CacheMode", "InFlight", "RequestCache"]

CacheMode = Literal["use", "refresh", "off"]
"""``use``: read and write the ledger; ``refresh``: send everything again and overwrite what is
stored; ``off``: neither read nor write (duplicates within the run are still sent once)."""


@dataclass
class InFlight:
    """One request being sent; identical requests wait on ``done`` and read ``completion``."""

    done: anyio.Event = field(default_factory=anyio.Event)
    completion: Completion | None = None
    abandoned: bool = False
    """The owner gave up without an answer (its trace was cancelled, its engine did not start):
    a waiter claims the key again and sends it itself."""


class RequestCache:
    """The ledger as seen by one run (``ledger`` is None when the cache is off)."""

    def __init__(self, ledger: Ledger | None, mode: CacheMode = "use") -> None:
        self.ledger = ledger if mode != "off" else None
        self.mode: CacheMode = mode
        self._inflight: dict[str, InFlight] = {}

    @classmethod
    def open(cls, path: str | Path | None, mode: CacheMode) -> RequestCache:
        """The run's view of the ledger at ``path`` (default :func:`default_ledger_path`)."""
        if mode == "off":
            return cls(None, "off")
        return cls(Ledger(path if path is not None else default_ledger_path()), mode)

    @property
    def path(self) -> Path | None:
        return self.ledger.path if self.ledger is not None else None

    async def lookup(
        self, keys: Sequence[str], first_keys: Sequence[str] = ()
    ) -> tuple[dict[str, StoredAnswer], dict[str, StoredFailure]]:
        """Stored answers among ``keys`` and stored final failures among ``first_keys``.

        Read on the event loop, on purpose: an indexed read of a chunk's keys takes about 0.5 ms
        (64 keys, 200k-row ledger), while a worker-thread hop costs up to the 5 ms GIL switch
        interval whenever the loop is busy, which made cached reruns 3x slower.
        """
        if self.ledger is None or self.mode != "use" or not (keys or first_keys):
            return {}, {}
        found = self.ledger.get_answers(keys)
        return found, (self.ledger.get_failures(first_keys) if first_keys else {})

    def claim(self, key: str) -> tuple[InFlight, bool]:
        """The in-flight slot for ``key`` and whether the caller owns it (must send and resolve it)."""
        slot = self._inflight.get(key)
        if slot is not None:
            return slot, False
        slot = self._inflight[key] = InFlight()
        return slot, True

    def abandon(self, key: str) -> None:
        """The owner of ``key`` will not answer it: wake the waiters, who claim it again."""
        slot = self._inflight.pop(key, None)
        if slot is not None:
            slot.abandoned = True
            slot.done.set()

    def resolve(self, key: str, completion: Completion) -> None:
        slot = self._inflight.pop(key, None)
        if slot is not None:
            slot.completion = completion
            slot.done.set()

    async def store(self, entries: list[tuple[str, str, str, Completion]]) -> None:
        """Commit ``(key, engine, step, completion)``; error answers are left out."""
        kept = [e for e in entries if e[3].finish_reason != "error"]
        if self.ledger is None or not kept:
            return
        ledger, replace = self.ledger, self.mode == "refresh"
        with anyio.CancelScope(shield=True):  # an answer that arrived is kept even on Ctrl-C
            await anyio.to_thread.run_sync(lambda: ledger.put(kept, replace=replace))

    async def store_failures(self, entries: list[tuple[str, StoredFailure]]) -> None:
        if self.ledger is None or not entries:
            return
        ledger = self.ledger
        await anyio.to_thread.run_sync(ledger.put_failures, entries)

    async def forget_failures(self, keys: list[str]) -> None:
        if self.ledger is None or not keys:
            return
        ledger = self.ledger
        await anyio.to_thread.run_sync(ledger.forget_failures, keys)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
