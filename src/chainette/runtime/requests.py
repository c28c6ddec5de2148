"""Between the step runner and the engines: the ledger, and one send per distinct request.

``RequestCache.lookup`` answers what the ledger already holds (one indexed read per chunk, on
the loop); ``RequestCache.claim`` makes sure that of several identical requests in flight at once
(duplicate prompts in one run, across chunks and branches) only one reaches the engine, the
others wait for its answer; ``RequestCache.claim_shared`` does the same across processes that
share the ledger file (a claim row with a lease: one process sends, the others poll the ledger
for the answer, and take the request over if the owner's lease runs out); ``RequestCache.store``
commits answers as soon as they arrive, so a crash loses nothing already paid for. Error answers
are never stored: a rerun sends them again. Lookups, claims and puts of the records in flight at
one moment are gathered into one read / one transaction (``runtime/ledger_batch.py``).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio

from ..engines.base import Completion
from ..ledger.store import Ledger, StoredAnswer, StoredFailure, default_ledger_path
from .ledger_batch import Gatherer

__all__ = ["CacheMode", "InFlight", "RequestCache"]

CacheMode = Literal["use", "refresh", "off"]
"""``use``: read and write the ledger; ``refresh``: send everything again and overwrite what is
stored; ``off``: neither read nor write (duplicates within the run are still sent once)."""

LEASE_S = 60.0
"""How long a claim in the ledger lasts unless renewed; the owner renews it every third of that
while the request is in flight, so another process takes a request over only once its owner has
been gone (killed, hung) this long."""


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
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This run's name on its claims in the ledger."""
        self.lease_s = LEASE_S
        self._leased: set[str] = set()
        """Keys this run holds claims on in the ledger (claimed, answer not stored yet)."""
        Lookup = tuple[Sequence[str], Sequence[str]]
        Found = tuple[dict[str, StoredAnswer], dict[str, StoredFailure]]
        Claimed = tuple[dict[str, StoredAnswer], list[str], list[str]]
        Entries = list[tuple[str, str, str, Completion]]
        self._reads: Gatherer[Lookup, Found] = Gatherer(self._read_all)
        self._claims: Gatherer[list[str], Claimed] = Gatherer(self._claim_all)
        self._puts: Gatherer[Entries, None] = Gatherer(self._put_all)

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

        Gathered with the lookups of the other records in flight into one read, on the event
        loop, on purpose: an indexed read of a chunk's keys takes about 0.5 ms (64 keys,
        200k-row ledger), while a worker-thread hop costs up to the 5 ms GIL switch interval
        whenever the loop is busy, which made cached reruns 3x slower.
        """
        if self.ledger is None or self.mode != "use" or not (keys or first_keys):
            return {}, {}
        answers, failures = await self._reads.submit((keys, first_keys), len(keys) + len(first_keys))
        return (
            {key: answers[key] for key in keys if key in answers},
            {key: failures[key] for key in first_keys if key in failures} if first_keys else {},
        )

    async def _read_all(
        self, lookups: list[tuple[Sequence[str], Sequence[str]]]
    ) -> tuple[dict[str, StoredAnswer], dict[str, StoredFailure]]:
        assert self.ledger is not None
        keys = [key for part, _ in lookups for key in part]
        first_keys = [key for _, part in lookups for key in part]
        found = self.ledger.get_answers(keys) if keys else {}
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

    async def claim_shared(self, keys: list[str]) -> tuple[dict[str, StoredAnswer], list[str], list[str]]:
        """Claim ``keys`` (this process owns them: :meth:`claim`) in the ledger, for processes
        sharing it: the answers stored meanwhile, the keys to send (claimed, leased to this run)
        and the keys another live process is sending (wait, then ask again). Without a ledger,
        or outside ``use`` mode, every key is to send."""
        if self.ledger is None or self.mode != "use" or not keys:
            return {}, keys, []
        answers, granted, held = await self._claims.submit(keys, len(keys))
        mine = set(keys)
        granted = [key for key in granted if key in mine]
        self._leased.update(granted)
        return (
            {key: answers[key] for key in keys if key in answers},
            granted,
            [key for key in held if key in mine],
        )

    async def _claim_all(
        self, parts: list[list[str]]
    ) -> tuple[dict[str, StoredAnswer], list[str], list[str]]:
        ledger, owner, lease = self.ledger, self.owner, self.lease_s
        assert ledger is not None
        keys = [key for part in parts for key in part]
        return await anyio.to_thread.run_sync(lambda: ledger.claim(keys, owner, lease))

    async def keep_leases(self, keys: Sequence[str]) -> None:
        """Renew this run's claims on ``keys`` every third of the lease until none is left
        (run in a task, cancelled once the keys are answered)."""
        if self.ledger is None:
            return
        ledger, owner, lease = self.ledger, self.owner, self.lease_s
        while True:
            await anyio.sleep(lease / 3)
            held = [key for key in keys if key in self._leased]
            if not held:
                return
            await anyio.to_thread.run_sync(ledger.renew, held, owner, lease)

    async def release(self, keys: Sequence[str]) -> None:
        """End this run's claims on ``keys`` that no stored answer ended (error answers, a
        cancelled send): processes waiting on them take them over at once."""
        mine = [key for key in keys if key in self._leased]
        if self.ledger is None or not mine:
            return
        self._leased.difference_update(mine)
        ledger, owner = self.ledger, self.owner
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: ledger.release(mine, owner))

    async def store(self, entries: list[tuple[str, str, str, Completion]]) -> None:
        """Commit ``(key, engine, step, completion)``; error answers are left out. Storing an
        answer ends its claim in the ledger."""
        kept = [e for e in entries if e[3].finish_reason != "error"]
        if self.ledger is None or not kept:
            return
        with anyio.CancelScope(shield=True):  # an answer that arrived is kept even on Ctrl-C
            await self._puts.submit(kept, len(kept))
        if self._leased:
            self._leased.difference_update(e[0] for e in kept)

    async def _put_all(self, parts: list[list[tuple[str, str, str, Completion]]]) -> None:
        ledger, replace = self.ledger, self.mode == "refresh"
        assert ledger is not None
        entries = [entry for part in parts for entry in part]
        await anyio.to_thread.run_sync(lambda: ledger.put(entries, replace=replace))

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
