"""File formats for step outputs: JSONL (default), CSV and Parquet, rolled every N rows.

A sink only ever runs on the writer's flush thread, so it needs no locking. Files are named
``000.jsonl``, ``001.jsonl``, ...; a new part also starts when a CSV/Parquet row brings columns
the current part's header lacks, so no field is ever dropped. A JSONL or CSV write that fails
(a full disk) is cut back off its file: a part holds whole rows only.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .._errors import MissingDependencyError

__all__ = ["FORMATS", "Sink", "make_sink"]


class Sink:
    """Appends rows to ``folder/NNN.<ext>`` parts of at most ``max_lines`` rows each."""

    ext = ""

    def __init__(self, folder: Path, max_lines: int | None, name: Callable[[int], str] | None = None) -> None:
        self.folder = folder
        self.max_lines = max_lines
        self._name = name or (lambda part: f"{part:03d}.{self.ext}")
        self.part = 0
        self.lines_in_part = 0
        self.rows_written = 0

    def path(self, part: int) -> Path:
        return self.folder / self._name(part)

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        start = 0
        while start < len(rows):
            room = len(rows) - start if self.max_lines is None else self.max_lines - self.lines_in_part
            if room <= 0:
                self._roll()
                continue
            batch = rows[start : start + room]
            written = self._write(batch)
            self.lines_in_part += written
            self.rows_written += written
            start += written

    def _roll(self) -> None:
        self._close_part()
        self.part += 1
        self.lines_in_part = 0

    def _write(self, rows: list[dict[str, Any]]) -> int:
        """Write a prefix of ``rows`` to the current part; return how many were written."""
        raise NotImplementedError(type(self).__name__)

    def _close_part(self) -> None:
        pass

    def close(self) -> None:
        self._close_part()


class JsonlSink(Sink):
    ext = "jsonl"

    def _write(self, rows: list[dict[str, Any]]) -> int:
        data = b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows)
        _append(self.path(self.part), data)
        return len(rows)


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path``, or nothing: a failed write (a full disk) is cut back off the
    file, so it never keeps half a row (the error goes on)."""
    fh = path.open("ab")
    start = fh.tell()
    try:
        fh.write(data)
        fh.close()
    except OSError as exc:
        with contextlib.suppress(OSError):
            fh.close()  # flushing what is left fails too; the file is closed all the same
        with contextlib.suppress(OSError):
            os.truncate(path, start)  # needs no space: it frees some
        if exc.filename is None:
            exc.filename = str(path)  # the error names the file
        raise


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


class CsvSink(Sink):
    ext = "csv"

    def __init__(self, folder: Path, max_lines: int | None, name: Callable[[int], str] | None = None) -> None:
        super().__init__(folder, max_lines, name)
        self.header: list[str] | None = None

    def _write(self, rows: list[dict[str, Any]]) -> int:
        if self.header is not None and not set(rows[0]) <= set(self.header):
            self._roll()
        if self.header is None:
            self.header = list(rows[0])
        fits = 0
        allowed = set(self.header)
        while fits < len(rows) and set(rows[fits]) <= allowed:
            fits += 1
        path = self.path(self.part)
        new = not path.exists()
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.header)
        if new:
            writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows[:fits])
        _append(path, text.getvalue().encode("utf-8"))
        return fits

    def _close_part(self) -> None:
        self.header = None


class ParquetSink(Sink):
    ext = "parquet"

    def __init__(self, folder: Path, max_lines: int | None, name: Callable[[int], str] | None = None) -> None:
        super().__init__(folder, max_lines, name)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise MissingDependencyError(
                "Parquet output needs pyarrow. Install it with: pip install 'chainette[parquet]'"
            ) from exc
        self._pa, self._pq = pa, pq
        self._writer: Any = None

    def _write(self, rows: list[dict[str, Any]]) -> int:
        table = self._pa.Table.from_pylist(rows)
        if self._writer is not None and not table.schema.equals(self._writer.schema):
            self._roll()
        if self._writer is None:
            self._writer = self._pq.ParquetWriter(self.path(self.part), table.schema)
        self._writer.write_table(table)
        return len(rows)

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


FORMATS: dict[str, type[Sink]] = {"jsonl": JsonlSink, "csv": CsvSink, "parquet": ParquetSink}


def make_sink(
    fmt: str, folder: Path, max_lines: int | None, name: Callable[[int], str] | None = None
) -> Sink:
    try:
        cls = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}") from None
    return cls(folder, max_lines, name)
