"""The batch back-end's own record of what it submitted: so a rerun never pays twice.

A provider's batch runs for minutes to hours; the process that submitted it may be gone by
then (Ctrl-C, a crash, ``kill -9``). The journal keeps, for every request line sent, its
fingerprint (the hash of the provider and the request body), the batch it went into and its
``custom_id``; it is written once the input file is uploaded, before the batch is created (under
the placeholder ``upload:<file id>``, renamed when the create answers), so even a crash during
the create is found again: the next call looks for a batch made from that file. On the
next ``generate``, a request whose fingerprint is still *pending* in a batch is attached to that
batch (polled, downloaded) instead of being sent again.

An item's state: ``pending`` (sent, no answer downloaded yet), ``answered`` (its batch ended and
was downloaded: the answer is kept here, in the same transaction, so it is never paid for again
even if the process dies before the runtime's ledger commit), ``delivered`` (its answer was handed
to the runtime and the engine closed after: the ledger keeps it from then on, and the copy here is
dropped) or ``failed`` (expired, failed or missing: the next request with that fingerprint goes
into a new batch). The next call asking for an ``answered`` fingerprint gets the kept answer, with
no batch and no poll. A batch's row keeps its last known status and reason.

One SQLite file in WAL mode, shared by processes (default ``batches.sqlite`` beside the default
ledger: see :func:`default_journal_path`). The engine layer never imports the ledger; this is
its own small store.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import EngineError

__all__ = ["BatchJournal", "default_journal_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    fingerprint TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    state TEXT NOT NULL,
    answer TEXT,
    PRIMARY KEY (fingerprint, batch_id)
);
CREATE INDEX IF NOT EXISTS items_pending ON items (fingerprint, state);
"""


def default_journal_path() -> Path:
    """``batches.sqlite`` in the folder of ``$CHAINETTE_LEDGER`` when it is set, else
    ``.chainette/batches.sqlite``: beside the ledger, so a project keeps both together."""
    env = os.environ.get("CHAINETTE_LEDGER")
    folder = Path(env).parent if env else Path(".chainette")
    return folder / "batches.sqlite"


class BatchJournal:
    """Fingerprint → batch id + custom id, with each item's state (see the module docstring).

    Example:
        >>> import tempfile
        >>> journal = BatchJournal(Path(tempfile.mkdtemp()) / "batches.sqlite")
        >>> journal.record("upload:file_1", "http://x/v1", "file_1", [("fp1", "c1")])
        >>> journal.created("upload:file_1", "batch_1")
        >>> journal.pending(["fp1", "fp2"])
        {'fp1': ('batch_1', 'c1')}
        >>> journal.settle("batch_1", "completed", None, answered={"fp1": '{"text": "{}"}'}, failed=[])
        >>> journal.pending(["fp1"]), journal.answers(["fp1", "fp2"])
        ({}, {'fp1': '{"text": "{}"}'})
        >>> journal.delivered(["fp1"])
        >>> journal.answers(["fp1"])
        {}
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
            if "answer" not in columns:  # a journal written before answers were kept
                self._db.execute("ALTER TABLE items ADD COLUMN answer TEXT")
        except (OSError, sqlite3.Error) as exc:
            raise EngineError(
                f"openai_batch: cannot open the batch journal {self.path} ({exc}). Pass another file as the "
                "engine option journal: PATH, in a folder you can write."
            ) from exc

    def record(
        self, batch_id: str, endpoint: str, input_file_id: str, items: Sequence[tuple[str, str]]
    ) -> None:
        """A batch is being created with ``items`` (``(fingerprint, custom_id)``): note them pending.
        Before its create is answered ``batch_id`` is a placeholder, renamed by :meth:`created`."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, 'created', NULL, ?, ?)",
                (batch_id, endpoint, input_file_id, now, now),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, 'pending', NULL)",
                [(fp, batch_id, custom_id) for fp, custom_id in items],
            )

    def created(self, placeholder: str, batch_id: str) -> None:
        """The batch recorded under ``placeholder`` (before its create was answered) is ``batch_id``."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE batches SET batch_id = ?, status = 'created', updated_at = ? WHERE batch_id = ?",
                (batch_id, time.time(), placeholder),
            )
            self._db.execute("UPDATE items SET batch_id = ? WHERE batch_id = ?", (batch_id, placeholder))

    def pending(self, fingerprints: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Of ``fingerprints``, those still pending in a batch: ``{fingerprint: (batch_id, custom_id)}``
        (the newest batch when there are several)."""
        found: dict[str, tuple[str, str]] = {}
        for fp, batch_id, custom_id in self._items(
            "SELECT i.fingerprint, i.batch_id, i.custom_id FROM items i JOIN batches b USING (batch_id) "
            "WHERE i.state = 'pending' AND i.fingerprint IN ({}) ORDER BY b.created_at",
            fingerprints,
        ):
            found[fp] = (batch_id, custom_id)
        return found

    def answers(self, fingerprints: Iterable[str]) -> dict[str, str]:
        """Of ``fingerprints``, those whose answer was downloaded but not yet delivered:
        ``{fingerprint: answer}`` (the JSON the engine kept, see :meth:`settle`)."""
        return {
            fp: answer
            for fp, answer in self._items(
                "SELECT fingerprint, answer FROM items WHERE state = 'answered' AND fingerprint IN ({})",
                fingerprints,
            )
        }

    def _items(self, sql: str, fingerprints: Iterable[str]) -> list[Any]:
        wanted = list(dict.fromkeys(fingerprints))
        rows: list[Any] = []
        with self._lock:
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                rows += self._db.execute(sql.format(",".join("?" * len(part))), part).fetchall()
        return rows

    def status(self, batch_id: str) -> tuple[str, str | None] | None:
        """A batch's last known ``(status, reason)``, or None when it is not in the journal."""
        with self._lock:
            row = self._db.execute(
                "SELECT status, reason FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def update(self, batch_id: str, status: str) -> None:
        """The batch's status as last polled."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE batches SET status = ?, updated_at = ? WHERE batch_id = ? AND status != ?",
                (status, time.time(), batch_id, status),
            )

    def settle(
        self,
        batch_id: str,
        status: str,
        reason: str | None,
        *,
        answered: Mapping[str, str],
        failed: Sequence[str],
    ) -> None:
        """The batch ended (``status``) and was downloaded: these items' answers (``{fingerprint:
        answer JSON}``) are kept until :meth:`delivered`, those items failed. One transaction."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE batches SET status = ?, reason = ?, updated_at = ? WHERE batch_id = ?",
                (status, reason, time.time(), batch_id),
            )
            self._db.executemany(
                "UPDATE items SET state = 'answered', answer = ? WHERE batch_id = ? AND fingerprint = ?",
                [(answer, batch_id, fp) for fp, answer in answered.items()],
            )
            self._db.executemany(
                "UPDATE items SET state = 'failed' WHERE batch_id = ? AND fingerprint = ?",
                [(batch_id, fp) for fp in failed],
            )

    def delivered(self, fingerprints: Iterable[str]) -> None:
        """These answers were handed to the runtime, which has committed them to its ledger: drop
        the copies kept here (a later request with one of these fingerprints is sent anew)."""
        rows = [(fp,) for fp in dict.fromkeys(fingerprints)]
        if not rows:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE items SET state = 'delivered', answer = NULL WHERE state = 'answered' AND fingerprint = ?",
                rows,
            )

    def counts(self) -> dict[str, int]:
        """Items by state (for tests and ``describe()``)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
