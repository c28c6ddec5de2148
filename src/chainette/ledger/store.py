"""The request ledger: a SQLite file of every completed request, keyed by what changes the answer.

One file serves every run of a project (default ``.chainette/ledger.sqlite`` under the current
folder, or ``$CHAINETTE_LEDGER``). It runs in WAL mode, so readers never wait for the writer
and several processes can share it; each ``put`` commits at once, so a run killed with
SIGKILL loses at most the request that was completing at that instant.

Three tables: ``completions`` (the engine's answer to a request), ``failures`` (records that
failed for good at a step with ``on_failure="stay"``, so reruns do not retry them) and ``claims``
(requests being sent right now: the key, the owner's id and when its lease ends). Processes
sharing the file claim a request before sending it (:meth:`Ledger.claim`): a live claim by
another owner means "wait for its answer to land here"; an expired one (its owner died) is taken
over. The owner renews its lease while the request is in flight, and storing the answer (or
:meth:`Ledger.release`, for an error answer) ends the claim.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .._errors import LedgerError
from ..engines.base import Completion

__all__ = ["DEFAULT_LEDGER", "Ledger", "LedgerInfo", "StoredAnswer", "StoredFailure", "default_ledger_path"]

DEFAULT_LEDGER = Path(".chainette") / "ledger.sqlite"
"""Where the ledger lives when nothing else is said: relative to the current folder."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    engine TEXT NOT NULL,
    step TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning TEXT,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    step TEXT NOT NULL,
    error_type TEXT NOT NULL,
    message TEXT NOT NULL,
    raw TEXT,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
"""
MMAP_BYTES = 1 << 30
"""How much of the ledger file SQLite may read through a memory map (address space, not memory)."""
CACHE_KIB = 64 * 1024
"""SQLite's page cache for the ledger (the default is 2 MiB)."""
_CHUNK = 500
"""Keys per ``SELECT ... IN (...)``: well under SQLite's bound-parameter limit."""


def default_ledger_path() -> Path:
    """``$CHAINETTE_LEDGER`` when set, else ``.chainette/ledger.sqlite`` in the current folder."""
    env = os.environ.get("CHAINETTE_LEDGER")
    return Path(env) if env else DEFAULT_LEDGER


class StoredAnswer(NamedTuple):
    """A stored completion as the runtime reads it: the fields of :class:`Completion`, without
    building a model per hit (cached reruns read hundreds of thousands)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reasoning: str | None


@dataclass(frozen=True, slots=True)
class StoredFailure:
    """A record's final failure at a step (``on_failure="stay"``)."""

    step: str
    error_type: str
    message: str
    raw: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    """What ``chainette cache info`` shows."""

    path: Path
    bytes: int
    completions: int
    failures: int
    by_step: dict[str, dict[str, int]]
    """``{step: {"completions", "prompt_tokens", "completion_tokens"}}``."""


class Ledger:
    """A SQLite ledger file. Thread-safe; blocking: call it from a worker thread in async code.

    Example:
        >>> ledger = Ledger(tmp_path / "ledger.sqlite")        # doctest: +SKIP
        >>> ledger.put([("k1", "local", "qa", Completion(text="{}"))])  # doctest: +SKIP
        >>> ledger.get(["k1"])["k1"].text                       # doctest: +SKIP
        '{}'
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=timeout, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives a process kill
            self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            # Reruns look up every request: read pages through a memory map and keep more of them
            # (lookups in input order hit the table at random; 35 % faster on a 50,000-entry ledger).
            self._db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"Cannot open the request ledger {str(self.path)!r}: {exc}. Pass another path "
                "(ledger=... / --ledger PATH) or run without the cache (cache='off' / --no-cache)."
            ) from exc
        self._lock = threading.Lock()

    # -- completions ------------------------------------------------------------------------

    def get(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The stored completions among ``keys``."""
        return {key: Completion(**answer._asdict()) for key, answer in self.get_answers(keys).items()}

    def get_answers(self, keys: Sequence[str]) -> dict[str, StoredAnswer]:
        """Like :meth:`get`, as plain tuples (the runtime's fast path)."""
        found: dict[str, StoredAnswer] = {}
        for rows in self._select(
            "SELECT key, text, finish_reason, prompt_tokens, completion_tokens, reasoning "
            "FROM completions WHERE key IN ({})",
            keys,
        ):
            for row in rows:
                found[row[0]] = StoredAnswer(*row[1:])
        return found

    def put(self, entries: Iterable[tuple[str, str, str, Completion]], *, replace: bool = False) -> None:
        """Store ``(key, engine, step, completion)`` entries in one transaction (committed on return).

        An existing entry is kept unless ``replace`` (a refreshing run).
        """
        now = time.time()
        rows = [
            (
                key,
                engine,
                step,
                c.text,
                c.finish_reason,
                c.prompt_tokens,
                c.completion_tokens,
                c.reasoning,
                now,
            )
            for key, engine, step, c in entries
        ]
        if rows:
            verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
            self._write(
                (f"{verb} INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows),
                ("DELETE FROM claims WHERE key = ?", [(row[0],) for row in rows]),  # answered: claim over
            )

    # -- claims across processes ----------------------------------------------------------------

    def claim(
        self, keys: Sequence[str], owner: str, lease_s: float
    ) -> tuple[dict[str, StoredAnswer], list[str], list[str]]:
        """Claim ``keys`` for ``owner`` for ``lease_s`` seconds, in one transaction.

        Returns the answers stored meanwhile (no claim needed), the keys now claimed by ``owner``
        (free, expired, or already its own: it sends them) and the keys under another owner's
        live lease (the caller waits for their answers and asks again).
        """
        if not keys:
            return {}, [], []
        answers: dict[str, StoredAnswer] = {}
        granted: list[str] = []
        held: list[str] = []
        with self._transaction():
            now = time.time()
            for start in range(0, len(keys), _CHUNK):
                part = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(part))
                for row in self._db.execute(
                    "SELECT key, text, finish_reason, prompt_tokens, completion_tokens, reasoning "
                    f"FROM completions WHERE key IN ({marks})",
                    part,
                ):
                    answers[row[0]] = StoredAnswer(*row[1:])
                busy = {
                    key
                    for key, who, until in self._db.execute(
                        f"SELECT key, owner, expires_at FROM claims WHERE key IN ({marks})", part
                    )
                    if who != owner and until > now
                }
                for key in part:
                    if key not in answers:
                        (held if key in busy else granted).append(key)
            self._db.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?)",
                [(key, owner, now + lease_s) for key in granted],
            )
        return answers, granted, held

    def renew(self, keys: Sequence[str], owner: str, lease_s: float) -> None:
        """Extend ``owner``'s leases on ``keys`` (those it still holds) to ``lease_s`` from now."""
        if keys:
            until = time.time() + lease_s
            self._write(
                (
                    "UPDATE claims SET expires_at = ? WHERE key = ? AND owner = ?",
                    [(until, k, owner) for k in keys],
                )
            )

    def release(self, keys: Sequence[str], owner: str) -> None:
        """End ``owner``'s claims on ``keys`` without an answer: the next claimant sends them."""
        if keys:
            self._write(("DELETE FROM claims WHERE key = ? AND owner = ?", [(k, owner) for k in keys]))

    # -- final failures -----------------------------------------------------------------------

    def get_failures(self, keys: Sequence[str]) -> dict[str, StoredFailure]:
        """The final failures stored under ``keys`` (first-attempt request keys)."""
        found: dict[str, StoredFailure] = {}
        for rows in self._select(
            "SELECT key, step, error_type, message, raw, attempts FROM failures WHERE key IN ({})", keys
        ):
            for key, step, error_type, message, raw, attempts in rows:
                found[key] = StoredFailure(step, error_type, message, raw, attempts)
        return found

    def put_failures(self, entries: Iterable[tuple[str, StoredFailure]]) -> None:
        now = time.time()
        rows = [(k, f.step, f.error_type, f.message, f.raw, f.attempts, now) for k, f in entries]
        if rows:
            self._write(("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?)", rows))

    def forget_failures(self, keys: Sequence[str]) -> None:
        """Drop stored failures (a refreshing run retries them)."""
        if keys:
            self._write(("DELETE FROM failures WHERE key = ?", [(k,) for k in keys]))

    # -- housekeeping ---------------------------------------------------------------------------

    def info(self) -> LedgerInfo:
        """Size, counts and per-step figures.

        Raises:
            LedgerError: the file is damaged (SQLite opened it, but its pages cannot be read).
        """
        try:
            with self._lock:
                completions = self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
                failures = self._db.execute("SELECT COUNT(*) FROM failures").fetchone()[0]
                by_step = {
                    step: {"completions": n, "prompt_tokens": p or 0, "completion_tokens": c or 0}
                    for step, n, p, c in self._db.execute(
                        "SELECT step, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) "
                        "FROM completions GROUP BY step ORDER BY step"
                    )
                }
        except sqlite3.Error as exc:
            raise LedgerError(
                f"Cannot read the request ledger {str(self.path)!r}: {exc}. The file is damaged: move it "
                "away (the next run starts a new ledger and sends its requests again)."
            ) from exc
        size = sum(p.stat().st_size for p in self._files() if p.exists())
        return LedgerInfo(self.path, size, completions, failures, by_step)

    def clear(self) -> int:
        """Delete every entry; returns how many completions there were."""
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM completions")
            self._db.execute("DELETE FROM failures")
            self._db.execute("DELETE FROM claims")
            self._db.execute("COMMIT")
            self._db.execute("VACUUM")
        return count

    def check(self) -> str:
        """SQLite's integrity check: ``"ok"`` when the file is sound."""
        with self._lock:
            result: str = self._db.execute("PRAGMA integrity_check").fetchone()[0]
        return result

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _files(self) -> list[Path]:
        return [self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")]

    def _select(self, sql: str, keys: Sequence[str]) -> list[list[Any]]:
        parts = [keys[start : start + _CHUNK] for start in range(0, len(keys), _CHUNK)]
        try:
            with self._lock:
                return [self._db.execute(sql.format(",".join("?" * len(p))), p).fetchall() for p in parts]
        except sqlite3.Error as exc:
            raise LedgerError(f"Cannot read the request ledger {str(self.path)!r}: {exc}") from exc

    def _write(self, *statements: tuple[str, list[tuple[Any, ...]]]) -> None:
        """Each ``(sql, rows)`` run over its rows, all in one committed transaction."""
        with self._transaction():
            for sql, rows in statements:
                self._db.executemany(sql, rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``), committed, or rolled back on any error;
        SQLite errors become :class:`LedgerError`."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(f"Cannot write to the request ledger {str(self.path)!r}: {exc}") from exc
