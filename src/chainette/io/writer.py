"""The run folder: ``graph.json``, ``<node_id>/``, ``flattened/``, ``failures.jsonl``, ``metadata.json``.

Rows are buffered on the event loop and written by a worker thread whenever enough are
pending, so memory stays bounded and the loop never blocks on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import anyio

from .._errors import RunFolderError
from .sinks import FORMATS, Sink, make_sink

__all__ = ["RunWriter"]

FLUSH_ROWS = 4096
FLUSH_SECONDS = 1.0


class RunWriter:
    """Writes one run folder.

    Args:
        path: The run folder. Must not exist or be empty, unless ``overwrite``.
        fmt: ``jsonl`` (default), ``csv`` or ``parquet`` for step outputs and the flattened view.
        max_lines_per_file: Rows per file part before rolling to the next.
        overwrite: Replace an existing run folder (one holding metadata.json or graph.json);
            any other non-empty folder is refused, so a typo cannot delete your files.
        resume: Rewrite an existing run folder of the chain ``chain_name`` (the runtime replays
            the run, answering completed requests from the ledger). Its old ``metadata.json``
            is kept in :attr:`previous`.
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
        self.previous: dict[str, Any] | None = None
        """The replaced run's metadata.json (when resuming or overwriting a run folder)."""
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if not (overwrite or resume):
                raise RunFolderError(
                    f"Output folder {str(path)!r} already exists and is not empty. Pass resume=True "
                    "(CLI: --resume) to continue that run (completed requests come from the ledger), "
                    "overwrite=True (--overwrite) to replace it, or choose another folder."
                )
            if not (path / "metadata.json").is_file() and not (path / "graph.json").is_file():
                raise RunFolderError(
                    f"Refusing to replace {str(path)!r}: it is not empty and does not look like a Chainette "
                    "run folder (no metadata.json or graph.json). Choose an empty or new folder."
                )
            self.previous = _read_json(path / "metadata.json") or _read_json(path / "graph.json") or {}
            previous_chain = self.previous.get("chain", self.previous.get("name"))
            if (
                resume
                and not overwrite
                and chain_name is not None
                and previous_chain not in (None, chain_name)
            ):
                raise RunFolderError(
                    f"Cannot resume {str(path)!r}: it holds a run of chain {previous_chain!r}, not "
                    f"{chain_name!r}. Choose another folder, or pass overwrite=True (--overwrite) to replace it."
                )
            shutil.rmtree(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"Cannot create output folder {str(path)!r}: {exc}") from exc
        self._sinks: dict[str, Sink] = {}
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._pending_rows = 0
        self._lock = anyio.Lock()
        self._last_flush = time.monotonic()
        self.failures = 0
        self.flattened = 0

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
        """Write every pending row (in a worker thread)."""
        async with self._lock:
            if not self._pending_rows:
                return
            taken, self._pending, self._pending_rows = self._pending, {}, 0
            self._last_flush = time.monotonic()
            jobs = [(self._sink(key), rows) for key, rows in taken.items()]
            await anyio.to_thread.run_sync(_write_all, jobs)

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
                folder.mkdir(parents=True, exist_ok=True)
                sink = make_sink(self.fmt, folder, self.max_lines)
            self._sinks[key] = sink
        return sink


def _read_json(path: Path) -> dict[str, Any] | None:
    """A whole-file artefact, or None when missing or unreadable (a crash can leave either)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _close_all(sinks: list[Sink]) -> None:
    for sink in sinks:
        sink.close()


def _write_all(jobs: list[tuple[Sink, list[dict[str, Any]]]]) -> None:
    for sink, rows in jobs:
        sink.write_rows(rows)
