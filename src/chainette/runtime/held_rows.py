"""A record's node rows held for its turn, when a stage hands records on in input order
(``ordered``, ``runtime/stages.py``), so the node folders are in input order too."""

from __future__ import annotations

from typing import Any

from .context import RecordSink

__all__ = ["HeldRows", "RowsByIndex"]


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


class RowsByIndex:
    """(ordered, a chunk's fast path) Node rows to the held rows of their record (by ``_index``)."""

    def __init__(self, sink: RecordSink, held: dict[int, HeldRows]) -> None:
        self.sink, self.held = sink, held

    def add(self, key: str, row: dict[str, Any]) -> None:
        rows = self.held.get(row.get("_index", -1))
        if rows is None:
            self.sink.add(key, row)
        else:
            rows.add(key, row)

    def add_failure(self, row: dict[str, Any]) -> None:
        self.sink.add_failure(row)

    def add_flattened(self, row: dict[str, Any]) -> None:
        self.sink.add_flattened(row)

    def open_folder(self, key: str) -> None:
        self.sink.open_folder(key)

    async def maybe_flush(self) -> None:
        """Nothing to flush before the records' turns."""
