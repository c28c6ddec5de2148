"""Parquet and CSV inputs, streamed through pyarrow in bounded memory.

A Parquet file is read with ``ParquetFile.iter_batches`` (only the columns the input model
reads, :data:`READ_BATCH_ROWS` rows at a time, on one thread, without pyarrow's pre-buffering of
whole row groups); a CSV file with pyarrow's streaming reader
(``pyarrow.csv.open_csv``, one block of :data:`CSV_BLOCK_BYTES` at a time). Neither ever loads
the whole file: what is held is the batch being turned into items, plus the chunks of one
read-ahead hop (:class:`~chainette.io.inputs.InputSource`).

Rows count from 0 in each file (``data.parquet row 17`` is the 18th row; in a CSV file the first
row under the header is row 0), as pandas and ``datasets`` count them. Record indexes go on
across the files of a folder. CSV cells arrive as text exactly as written (an empty cell is
``""``; pydantic turns ``"3"`` into an int field): each column is read as bytes and decoded
here, so a cell that is not UTF-8 fails its row alone, and so does a row with too few or too
many cells; both become failures at their place, the other rows keep their indexes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import InputError, MissingDependencyError
from .columns import ColumnMap
from .inputs import InputItem, InputSource, row_item

__all__ = [
    "CSV_BLOCK_BYTES",
    "PARQUET_BUFFER_BYTES",
    "READ_BATCH_ROWS",
    "TableFile",
    "TabularInput",
    "open_table",
    "pyarrow_modules",
]

READ_BATCH_ROWS = 1024
"""Rows per Parquet record batch taken from pyarrow (at most this many are read ahead)."""
CSV_BLOCK_BYTES = 1 << 20
"""Bytes per block of the CSV streaming reader."""
PARQUET_BUFFER_BYTES = 1 << 16
"""The read buffer of a Parquet column chunk (measured, 1,000,000 rows in 10 row groups, 28 MB:
pyarrow holds 4 MB while iterating, against 31 MB, the whole file, with its defaults)."""


def pyarrow_modules() -> tuple[Any, Any, Any]:
    """``(pyarrow, pyarrow.parquet, pyarrow.csv)``, or the error that names the extra."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            "Reading Parquet or CSV input needs pyarrow. Install it with: pip install 'chainette[datasets]' "
            "(or 'chainette[parquet]')."
        ) from exc
    return pa, pq, pacsv


@dataclass
class TableFile:
    """One Parquet or CSV file of an input, as opened (footer or header read)."""

    path: Path
    name: str
    """How ``where`` names it: ``data.parquet``, ``shards/part-2.parquet``."""
    kind: str
    """``parquet`` or ``csv``."""
    columns: list[str]
    rows: int | None = None
    """From the Parquet footer; None for CSV (unknown until read)."""


def open_table(path: Path, name: str, kind: str) -> TableFile:
    """Read what a file says about itself (Parquet footer, CSV header) or refuse it clearly."""
    pa, pq, pacsv = pyarrow_modules()
    try:
        if kind == "parquet":
            meta = pq.ParquetFile(path)
            try:
                return TableFile(path, name, kind, list(meta.schema_arrow.names), meta.metadata.num_rows)
            finally:
                meta.close()
        reader = pacsv.open_csv(  # parses the first block: its bad rows are met (and counted) when read
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 16),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
        )
        try:
            return TableFile(path, name, kind, list(reader.schema.names))
        finally:
            reader.close()
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        other = "CSV" if kind == "parquet" else "Parquet"
        raise InputError(
            f"{name} cannot be read as {kind.upper() if kind == 'csv' else 'Parquet'} ({exc}). "
            f"Check that the file is what its name says ({other}? JSONL? rename it to .{other.lower()} or "
            f".jsonl), or that it was written completely."
        ) from exc


class TabularInput(InputSource):
    """Parquet or CSV files read in order, one record per row."""

    def __init__(self, files: Sequence[TableFile], cmap: ColumnMap, name: str) -> None:
        self.files = list(files)
        self.cmap = cmap
        self.name = name
        rows = [f.rows for f in self.files]
        self.total = None if None in rows else sum(r for r in rows if r is not None)

    def items(self) -> Iterator[InputItem]:
        index = 0
        for table in self.files:
            rows = _parquet_rows(table, self.cmap) if table.kind == "parquet" else _csv_rows(table, self.cmap)
            for row, value, error, source in rows:
                yield row_item(index, value, f"{table.name} row {row}", error, source)
                index += 1


Row = tuple[int, Any, str | None, bytes | None]
"""(row in the file, value, why it cannot be read or None, what was read when it is not the value)."""


def _read_error(table: TableFile, row: int, exc: BaseException) -> InputError:
    return InputError(
        f"{table.name} could not be read past row {row} ({exc}). The file may be truncated or damaged: "
        "check it, or write it again."
    )


def _parquet_rows(table: TableFile, cmap: ColumnMap) -> Iterator[Row]:
    pa, pq, _ = pyarrow_modules()
    row = 0
    # pre_buffer (pyarrow's default) reads every row group's column chunks at once: the whole file.
    # Without it a column chunk is streamed through a small buffer, page by page.
    with pq.ParquetFile(table.path, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES) as handle:
        # use_threads: pyarrow's decoding threads, with its mimalloc pool, kept growing the RSS of a
        # 1,000,000-row read (74 → 163 MiB); on one thread it stays flat after the first row group
        batches = handle.iter_batches(batch_size=READ_BATCH_ROWS, columns=cmap.read, use_threads=False)
        while True:
            try:
                batch = next(batches, None)
                values = batch.to_pylist() if batch is not None else None
            except (pa.ArrowException, OSError) as exc:
                raise _read_error(table, row, exc) from exc
            if values is None:
                return
            for value in values:
                yield row, cmap.value(value), None, None
                row += 1


def _csv_rows(table: TableFile, cmap: ColumnMap) -> Iterator[Row]:
    """Rows in file order, bad ones (wrong number of cells, not UTF-8) at their place."""
    pa, _, pacsv = pyarrow_modules()
    bad: list[tuple[int | None, str, bytes]] = []

    def skip(invalid: Any) -> str:
        # ``number`` counts physical CSV rows from 1, the header included
        at = invalid.number - 2 if invalid.number is not None else None
        text = invalid.text if len(invalid.text) <= 200 else invalid.text[:200] + "..."
        bad.append(
            (
                at,
                f"has {invalid.actual_columns} cell{'s' if invalid.actual_columns != 1 else ''} where the header "
                f"has {invalid.expected_columns} "
                f"({text!r}). Fix the row (a missing comma, or a quote that is not closed?), then run again.",
                invalid.text.encode("utf-8", errors="surrogateescape"),
            )
        )
        return "skip"

    read = cmap.read if cmap.read is not None else table.columns
    reader = pacsv.open_csv(
        table.path,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.binary() for c in read}, include_columns=read, strings_can_be_null=False
        ),
    )
    row = 0
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                batch = None
            except (pa.ArrowException, OSError) as exc:
                raise _read_error(table, row, exc) from exc
            cells = batch.to_pylist() if batch is not None else []
            bad.sort(key=lambda b: -1 if b[0] is None else b[0])
            pending = iter(cells)
            for cell_row in pending:
                while bad and bad[0][0] is not None and bad[0][0] <= row:
                    yield _invalid(table, row, bad.pop(0))
                    row += 1
                yield _decoded(table, row, cmap, cell_row)
                row += 1
            while bad:  # the rest of this block: after its last good row, in order
                yield _invalid(table, row, bad.pop(0))
                row += 1
            if batch is None:
                return
    finally:
        reader.close()


def _invalid(table: TableFile, row: int, bad: tuple[int | None, str, bytes]) -> Row:
    return row, None, f"{table.name} row {row}: {bad[1]}", bad[2]


def _decoded(table: TableFile, row: int, cmap: ColumnMap, cells: dict[str, bytes]) -> Row:
    value: dict[str, Any] = {}
    error: str | None = None
    for column, raw in cells.items():
        try:
            value[column] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            value[column] = raw.decode("utf-8", errors="backslashreplace")
            if error is None:
                error = (
                    f"{table.name} row {row}: column {column!r} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
                    f"at byte {exc.start + 1} of the cell). CSV input must be UTF-8: convert the file "
                    f"(if it is Latin-1: iconv -f latin1 -t utf-8 {table.path.name} > utf8-{table.path.name}) "
                    "or fix the cell, then run again."
                )
    return row, cmap.value(value), error, None
