"""The run folder: ``graph.json``, ``<node_id>/``, ``flattened/``, ``failures.jsonl``, ``metadata.json``.

Rows are buffered on the event loop and written whenever enough are pending, so memory stays
bounded: on the loop while a write is quick, by a worker thread once one is not
(:mod:`.offload`), so the loop waits on a slow disk at most once.

A full disk (or any failed write) ends the run cleanly: the row being written is cut back off its
file (files keep whole rows only; readers skip a cut last line anyway, see
:func:`chainette.runtime.result.read_rows`), no further row is written, and the error names the
file and what to do. So that the run's end can still be recorded, the writer holds
:data:`RESERVE_BYTES` of the disk in ``.chainette-reserve`` from the start: the final
``metadata.json`` (status ``failed``, and why) is written in that space when nothing else is left.
The reserve is removed when the run lets go of the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import anyio

from .._errors import RunFolderError
from .file_sink import open_file_sink
from .layout import LOCK, RESERVE, Ownership, clear_run_folder, inspect_folder, write_marker
from .lock import FolderLock
from .offload import Offload
from .sinks import FORMATS, Sink, make_sink

__all__ = ["RESERVE_BYTES", "RunWriter", "fs_error"]

FLUSH_ROWS = 4096
FLUSH_SECONDS = 1.0
RESERVE_BYTES = 256 * 1024
"""Disk space held from the start of a run for its final ``metadata.json`` (a few KiB; hundreds of
nodes' stats fit), so a run that fills the disk still records that it failed, and why."""
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


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
        self._files: list[str] = []
        """Files a sink node writes in the run folder (accounted for in the marker)."""
        self._targets: dict[Path, str] = {}
        self._lock_file = self._take_folder(overwrite=overwrite, resume=resume)
        self._sinks: dict[str, Sink] = {}
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_rows = 0
        self._lock = anyio.Lock()
        self._writes = Offload()
        self._last_flush = time.monotonic()
        self._broken: RunFolderError | None = None
        """The error of the first failed write: no row is written after it."""
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
            _hold_reserve(path / RESERVE)
        except BaseException as exc:
            lock.release()
            if isinstance(exc, OSError):
                raise fs_error(exc, f"prepare the run folder {str(path)!r}") from exc
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
        """Give back the reserved space and let go of the folder's lock (at the very end of the
        run, after metadata.json)."""
        with contextlib.suppress(OSError):
            (self.path / RESERVE).unlink(missing_ok=True)
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

    def open_file(self, key: str, target: str) -> Path:
        """Send ``key``'s rows to one file instead of ``<key>/`` (a ``Sink`` node): ``target`` is a
        file name in the run folder, or an absolute path; its format comes from its suffix. The
        file is started empty now; returns its path.

        Raises:
            RunFolderError: Two sinks name the same file.
        """
        relative = not Path(target).is_absolute()
        path = (self.path / target) if relative else Path(target)
        resolved = path.resolve()
        other = self._targets.get(resolved)
        if other is not None and other != key:
            raise RunFolderError(
                f"Sinks {other!r} and {key!r} both write {str(path)!r}: give each its own file."
            )
        self._targets[resolved] = key
        if relative and target not in self._files:  # recorded before it exists, like a folder
            self._files.append(target)
            write_marker(self.path, self.run_id, self.chain_name, self._folders, self._files)
        self._sinks[key] = open_file_sink(path)
        return path

    async def maybe_flush(self) -> None:
        """Flush when enough rows are pending, or the oldest has waited ``FLUSH_SECONDS``."""
        if self._pending_rows >= FLUSH_ROWS or (
            self._pending_rows and time.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            await self.flush()

    async def flush(self) -> None:
        """Write every pending row.

        Raises:
            RunFolderError: a write failed (the disk is full...): it names the file and what to
                do. Every later flush drops its rows (the run is ending; ``--resume`` rewrites
                the folder) and raises the same error again.
        """
        async with self._lock:
            if self._broken is not None:
                self._pending, self._pending_rows = {}, 0
                raise self._broken
            if not self._pending_rows:
                return
            taken, self._pending, self._pending_rows = self._pending, {}, 0
            self._last_flush = time.monotonic()
            try:
                jobs = [(self._sink(key), rows) for key, rows in taken.items()]
                await self._writes.run(_write_all, jobs)
            except OSError as exc:
                self._broken = fs_error(exc, f"write the run folder {str(self.path)!r}")
                raise self._broken from exc

    # -- whole-file artefacts -----------------------------------------------------------

    def write_json(self, name: str, data: Any, *, final: bool = False) -> None:
        """Write ``name`` atomically (temp file + rename), so a crash never leaves half a file.

        ``final``: the run's last write (its closing ``metadata.json``): when the disk is full,
        the space held in reserve is given back and the write tried once more; either way the
        reserve is gone afterwards."""
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
        reserve = self.path / RESERVE
        try:
            _write_atomic(self.path / name, text)
        except OSError as exc:
            if not (final and exc.errno in _DISK_FULL and reserve.exists()):
                raise
            reserve.unlink()
            _write_atomic(self.path / name, text)
        if final:
            reserve.unlink(missing_ok=True)

    async def close(self) -> None:
        """Flush and close every file (safe to call once, even after an error).

        Raises:
            RunFolderError: a write failed, now or earlier (see :meth:`flush`); every file is
                closed all the same.
        """
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            finally:
                closed = await anyio.to_thread.run_sync(_close_all, list(self._sinks.values()))
            if closed is not None and self._broken is None:
                self._broken = fs_error(closed, f"write the run folder {str(self.path)!r}")
                raise self._broken from closed

    def _sink(self, key: str) -> Sink:
        sink = self._sinks.get(key)
        if sink is None:
            if key == "failures":
                sink = make_sink("jsonl", self.path, None, name=lambda part: "failures.jsonl")
            else:
                folder = self.path / key
                if key not in self._folders:  # recorded before it exists: a crash leaves nothing unaccounted
                    self._folders.append(key)
                    write_marker(self.path, self.run_id, self.chain_name, self._folders, self._files)
                folder.mkdir(parents=True, exist_ok=True)
                sink = make_sink(self.fmt, folder, self.max_lines)
            self._sinks[key] = sink
        return sink


def fs_error(exc: OSError, doing: str) -> RunFolderError:
    """A file-system error of a run, said plainly (no traceback), with what to do."""
    what = exc.strerror or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in _DISK_FULL:
        code = errno.errorcode.get(exc.errno or 0, "ENOSPC")
        full = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
        where = f", writing {exc.filename}" if exc.filename else ""
        return RunFolderError(
            f"Cannot {doing}: {full} ({code}: {what}{where}). Free space on that disk (or "
            "write the run elsewhere with -o / output_dir), then run again with --resume "
            "(resume=True): every answer already received comes from the ledger, nothing is sent twice."
        )
    hint = (
        " Check the folder's permissions, or choose another folder."
        if isinstance(exc, PermissionError)
        else " Check the disk and the path, or choose another folder."
    )
    return RunFolderError(f"Cannot {doing}: {what}{where}.{hint}")


def _hold_reserve(path: Path) -> None:
    """Take :data:`RESERVE_BYTES` of the disk in ``path`` (random bytes: a compressing file system
    would not hold zeros). A disk without even that much free fails the run here, before any
    request is sent."""
    try:
        with path.open("wb") as fh:
            fh.write(os.urandom(RESERVE_BYTES))
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        raise


def _write_atomic(target: Path, text: str) -> None:
    tmp = target.with_suffix(target.suffix + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # half a temp file helps no one, and holds space
        raise


def _close_all(sinks: list[Sink]) -> OSError | None:
    """Close every sink; the first error (a Parquet footer on a full disk), if any, is returned."""
    first: OSError | None = None
    for sink in sinks:
        try:
            sink.close()
        except OSError as exc:
            first = first or exc
    return first


def _write_all(jobs: list[tuple[Sink, list[dict[str, Any]]]]) -> None:
    for sink, rows in jobs:
        sink.write_rows(rows)
