"""The run folder: ``graph.json``, ``<node_id>/``, ``flattened/``, ``failures.jsonl``, ``metadata.json``.

Rows are buffered on the event loop and written whenever enough are pending, so memory stays
bounded: on the loop while a write is quick, by a worker thread once one is not
(:mod:`.offload`), so the loop waits on a slow disk at most once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio

from .._errors import RunFolderError
from .layout import LOCK, Ownership, clear_run_folder, inspect_folder, write_marker
from .lock import FolderLock
from .offload import Offload
from .sinks import FORMATS, Sink, make_sink

__all__ = ["RunWriter", "fs_error"]

FLUSH_ROWS = 4096
FLUSH_SECONDS = 1.0


class RunWriter:
    """Writes one run folder.

    Args:
        path: The run folder. Must not exist or be empty, unless ``overwrite``.
        fmt: ``jsonl`` (default), ``csv`` or ``parquet`` for step outputs and the flattened view.
        max_lines_per_file: Rows per file part before rolling to the next.
        overwrite: Replace an existing run folder. Only a folder Chainette provably wrote is
            replaced (its marker, and nothing the marker does not account for: see
            ``io/layout.py``); any other non-empty folder is refused untouched.
        resume: Rewrite an existing run folder of the chain ``chain_name`` (the runtime replays
            the run, answering completed requests from the ledger). Its old ``metadata.json``
            is kept in :attr:`previous`.
        chain_name: The chain's name, kept in the folder's marker.
        run_id: This run's id, kept in the folder's marker.

    The folder is locked from here until :meth:`release`: a second writer is refused, naming
    the process that holds it; the OS drops the lock when the holder dies.
    """

    def __init__(
        self,
        path: Path,
        *,
        fmt: str = "jsonl",
        max_lines_per_file: int = 100_000,
        overwrite: bool = False,
        resume: bool = False,
        chain_name: str | None = None,
        run_id: str = "",
    ) -> None:
        if path.exists() and not path.is_dir():
            raise RunFolderError(
                f"{str(path)!r} is a file, not a folder: a run writes a folder of files. Pass a folder "
                "path (new or empty; -o / output_dir), e.g. the file's name without its extension."
            )
        if fmt not in FORMATS:
            raise RunFolderError(f"Unknown output format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
        self.path = path
        self.fmt = fmt
        self.max_lines = max_lines_per_file
        self.run_id = run_id
        self.chain_name = chain_name or ""
        self.previous: dict[str, Any] | None = None
        """The replaced run's metadata.json (when resuming or overwriting a run folder)."""
        self._folders: list[str] = []
        self._lock_file = self._take_folder(overwrite=overwrite, resume=resume)
        self._sinks: dict[str, Sink] = {}
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_rows = 0
        self._lock = anyio.Lock()
        self._writes = Offload()
        self._last_flush = time.monotonic()
        self.failures = 0
        self.flattened = 0

    def _take_folder(self, *, overwrite: bool, resume: bool) -> FolderLock:
        """Create or reclaim the run folder and lock it; refuse anything not provably ours."""
        path = self.path
        try:
            taken = path.is_dir() and any(path.iterdir())
        except OSError as exc:
            raise fs_error(exc, f"read the output folder {str(path)!r}") from exc
        if taken:
            if not (overwrite or resume):
                raise RunFolderError(
                    f"Output folder {str(path)!r} already exists and is not empty. Pass resume=True "
                    "(CLI: --resume) to continue that run (completed requests come from the ledger), "
                    "overwrite=True (--overwrite) to replace it, or choose another folder."
                )
            self._check_owned(path, resume=resume, overwrite=overwrite)  # read-only: before any write
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fs_error(exc, f"create the output folder {str(path)!r}") from exc
        lock = FolderLock.acquire(path / LOCK, folder=path)
        try:
            if taken:  # again under the lock: the folder may have changed since the first look
                clear_run_folder(path, self._check_owned(path, resume=resume, overwrite=overwrite))
            write_marker(path, self.run_id, self.chain_name, self._folders)
        except BaseException as exc:
            lock.release()
            if isinstance(exc, OSError):
                raise fs_error(exc, f"replace the run in {str(path)!r}") from exc
            raise
        return lock

    def _check_owned(self, path: Path, *, resume: bool, overwrite: bool) -> Ownership:
        try:
            ownership = inspect_folder(path)
        except OSError as exc:
            raise fs_error(exc, f"read the output folder {str(path)!r}") from exc
        if not ownership.owned:
            raise RunFolderError(
                f"Refusing to replace {str(path)!r}: {ownership.reason}. Chainette only replaces a run "
                "folder it wrote itself, holding nothing else. Choose a new or empty folder, or move "
                "those files away yourself."
            )
        self.previous = ownership.previous or {}
        assert ownership.marker is not None
        previous_chain = self.previous.get("chain", ownership.marker.get("chain"))
        if resume and not overwrite and self.chain_name and previous_chain not in (None, self.chain_name):
            raise RunFolderError(
                f"Cannot resume {str(path)!r}: it holds a run of chain {previous_chain!r}, not "
                f"{self.chain_name!r}. Choose another folder, or pass overwrite=True (--overwrite) to replace it."
            )
        return ownership

    def release(self) -> None:
        """Let go of the folder's lock (at the very end of the run, after metadata.json)."""
        self._lock_file.release()

    # -- rows (called on the event loop) --------------------------------------------------

    def add(self, key: str, row: dict[str, Any]) -> None:
        """Queue a row for ``<key>/`` (a node id, ``flattened`` or ``failures``)."""
        self._pending.setdefault(key, []).append(row)
        self._pending_rows += 1

    def add_failure(self, row: dict[str, Any]) -> None:
        self.failures += 1
        self.add("failures", row)

    def add_flattened(self, row: dict[str, Any]) -> None:
        self.flattened += 1
        self.add("flattened", row)

    def open_folder(self, key: str) -> None:
        """Create ``<key>/`` now, so a node that outputs nothing still has its folder."""
        self._sink(key)

    async def maybe_flush(self) -> None:
        """Flush when enough rows are pending, or the oldest has waited ``FLUSH_SECONDS``."""
        if self._pending_rows >= FLUSH_ROWS or (
            self._pending_rows and time.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            await self.flush()

    async def flush(self) -> None:
        """Write every pending row."""
        async with self._lock:
            if not self._pending_rows:
                return
            taken, self._pending, self._pending_rows = self._pending, {}, 0
            self._last_flush = time.monotonic()
            jobs = [(self._sink(key), rows) for key, rows in taken.items()]
            await self._writes.run(_write_all, jobs)

    # -- whole-file artefacts -----------------------------------------------------------

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` atomically (temp file + rename), so a crash never leaves half a file."""
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, target)

    async def close(self) -> None:
        """Flush and close every file (safe to call once, even after an error)."""
        with anyio.CancelScope(shield=True):
            await self.flush()
            await anyio.to_thread.run_sync(_close_all, list(self._sinks.values()))

    def _sink(self, key: str) -> Sink:
        sink = self._sinks.get(key)
        if sink is None:
            if key == "failures":
                sink = make_sink("jsonl", self.path, None, name=lambda part: "failures.jsonl")
            else:
                folder = self.path / key
                if key not in self._folders:  # recorded before it exists: a crash leaves nothing unaccounted
                    self._folders.append(key)
                    write_marker(self.path, self.run_id, self.chain_name, self._folders)
                folder.mkdir(parents=True, exist_ok=True)
                sink = make_sink(self.fmt, folder, self.max_lines)
            self._sinks[key] = sink
        return sink


def fs_error(exc: OSError, doing: str) -> RunFolderError:
    """A file-system error at the start or end of a run, said plainly (no traceback)."""
    what = exc.strerror or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    hint = (
        " Check the folder's permissions, or choose another folder."
        if isinstance(exc, PermissionError)
        else " Check the disk and the path, or choose another folder."
    )
    return RunFolderError(f"Cannot {doing}: {what}{where}.{hint}")


def _close_all(sinks: list[Sink]) -> None:
    for sink in sinks:
        sink.close()


def _write_all(jobs: list[tuple[Sink, list[dict[str, Any]]]]) -> None:
    for sink, rows in jobs:
        sink.write_rows(rows)
