"""A record's node rows held for its turn, when a stage hands records on in input order
(``ordered``, ``runtime/stages.py``), so the node folders are in input order too."""

from __future__ import annotations

from typing import Any

from .context import RecordSink

__all__ = ["ChunkRows", "HeldRows"]


class HeldRows:
    """A record's node rows, held until the record's turn to be handed on (``ordered``), so the
    step folders are in input order too; failures go through at once."""

    def __init__(self, sink: RecordSink) -> None:
        self.sink = sink
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def add(self, key: str, row: dict[str, Any]) -> None:
        self.rows.append((key, row))

    def add_failure(self, row: dict[str, Any]) -> None:
        self.sink.add_failure(row)

    def add_flattened(self, row: dict[str, Any]) -> None:
        self.sink.add_flattened(row)

    def open_folder(self, key: str) -> None:
        self.sink.open_folder(key)

    async def maybe_flush(self) -> None:
        """Nothing to flush before its turn."""

    def release(self) -> None:
        for key, row in self.rows:
            self.sink.add(key, row)
        self.rows = []


class ChunkRows(HeldRows):
    """(ordered, a chunk's fast path) The node rows of a chunk's records, held in the order they
    came: all together when the whole chunk is done at once (:meth:`whole`), else split by record
    (``_index``) into each one's held rows (:meth:`split`), where later rows then go directly;
    failures, flattened rows and folders go through as a record's held rows send them."""

    def __init__(self, sink: RecordSink) -> None:
        super().__init__(sink)
        self.held: dict[int, HeldRows] | None = None

    def whole(self) -> HeldRows:
        """Every row, held as one record's (the chunk is handed on as one)."""
        rows = HeldRows(self.sink)
        rows.rows = self.rows
        return rows

    def split(self, held: dict[int, HeldRows]) -> None:
        """Each row to its record's held rows, from now on too."""
        self.held = held
        rows, self.rows = self.rows, []
        for key, row in rows:
            self.add(key, row)

    def add(self, key: str, row: dict[str, Any]) -> None:
        if self.held is None:
            self.rows.append((key, row))
            return
        rows = self.held.get(row.get("_index", -1))
        if rows is None:
            self.sink.add(key, row)
        else:
            rows.add(key, row)
