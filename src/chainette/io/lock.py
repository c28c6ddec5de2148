"""An exclusive lock on a run folder, held for the length of the run.

The lock is an OS file lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on
``<run>/.chainette-run.lock``: the kernel drops it when the holding process dies, so a
SIGKILLed run never leaves a stale lock that blocks ``--resume``. The file itself is never
deleted while a run may hold it (deleting a locked file and creating a new one would let two
processes each lock "the" file). It holds the holder's pid and start time, for the message a
second writer gets.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
import sys
from pathlib import Path
from typing import IO

from .._errors import RunFolderError

__all__ = ["FolderLock"]


class FolderLock:
    """``FolderLock.acquire(path)`` or a :class:`RunFolderError` naming the process that holds it."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, path: Path, *, folder: Path) -> FolderLock:
        try:
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        except OSError as exc:
            raise RunFolderError(
                f"Cannot create the lock file {str(path)!r}: {exc.strerror or exc}."
            ) from exc
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(
                f"Output folder {str(folder)!r} is in use by a running Chainette run ({holder}). Two runs "
                "writing one folder would mix their rows: wait for it to finish, stop it, or choose "
                "another folder."
            )
        handle.seek(0)
        handle.truncate()
        started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        """Let go of the lock (idempotent). The file stays; its content no longer matters."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
        _unlock(handle)
        handle.close()


if sys.platform == "win32":  # pragma: no cover - CI runs on Linux
    import msvcrt

    def _try_lock(handle: IO[str]) -> bool:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(handle: IO[str]) -> None:
        handle.seek(0)
        with contextlib.suppress(OSError):
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[str]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
