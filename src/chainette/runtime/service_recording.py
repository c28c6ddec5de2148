"""What a served chain writes: each trace's rows (:class:`TraceSink`) and, with ``record_to=``,
the run folder every finished trace is recorded in (:class:`Recording`), laid out and closed as a
batch run's is. Used by :mod:`.service` only."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..graph.chain import ChainGraph
from ..io.writer import RunWriter
from .context import RunContext
from .executor import RunOptions, _finish, _initial_metadata, _lay_out
from .requests import RequestCache
from .run_meta import StartNotes, _keep_start_warnings


class TraceSink:
    """What the runners write for one trace: failures kept for the trace's ending, every row
    passed on to the service's run folder when it records."""

    def __init__(self, writer: RunWriter | None) -> None:
        self.writer = writer
        self.failures: list[dict[str, Any]] = []

    def add(self, key: str, row: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.add(key, row)

    def add_failure(self, row: dict[str, Any]) -> None:
        self.failures.append(row)
        if self.writer is not None:
            self.writer.add_failure(row)

    def add_flattened(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.add_flattened(row)

    def open_folder(self, key: str) -> None:
        if self.writer is not None:
            self.writer.open_folder(key)

    async def maybe_flush(self) -> None:
        if self.writer is not None:
            await self.writer.maybe_flush()


@dataclass
class Recording:
    """The run folder a service records to, and what its ``metadata.json`` will say."""

    writer: RunWriter
    meta: dict[str, Any]
    started: float
    counts: dict[str, int] = field(default_factory=lambda: {"records_in": 0})

    async def finish(
        self, chain: ChainGraph, ctx: RunContext, completed: bool, served: Mapping[str, int]
    ) -> None:
        """Close the run folder: ``metadata.json`` with the status and the traces by ending."""
        self.meta["status"] = "completed" if completed else "interrupted"
        self.meta["served"] = dict(served)
        await _finish(chain, ctx, self.writer, self.counts, self.meta, self.started)


def open_recording(
    chain: ChainGraph, folder: Path, overwrite: bool, cache: RequestCache, notes: StartNotes
) -> Recording:
    """The run folder ``folder``, laid out (step folders, ``graph.json``) for a served chain."""
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    writer = RunWriter(folder, overwrite=overwrite, chain_name=chain.name, run_id=run_id)
    started = time.time()
    opts = RunOptions(ledger=cache.path, cache=cache.mode)
    meta = _initial_metadata(chain, opts, writer, run_id, started)
    meta["mode"] = "service"
    _keep_start_warnings(meta, notes)
    recording = Recording(writer, meta, started)
    _lay_out(chain, writer, meta)
    return recording
