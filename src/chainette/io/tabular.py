"""Parquet and CSV inputs, streamed through pyarrow in bounded memory.

A Parquet file is read with ``ParquetFile.iter_batches`` (only the columns the input model
reads, :data:`READ_BATCH_ROWS` rows at a time, on one thread, without pyarrow's pre-buffering of
whole row groups); a CSV file with pyarrow's streaming reader
(``pyarrow.csv.open_csv``, one block of :data:`CSV_BLOCK_BYTES` at a time; a file with a row
longer than that, a cell over 1 MiB, is read again with larger blocks). Neither ever loads
the whole file: what is held is the batch being turned into items, plus the chunks of one
read-ahead hop (:class:`~chainette.io.items.InputSource`).

Rows count from 0 in each file (``data.parquet row 17`` is the 18th row; in a CSV file the first
row under the header is row 0), as pandas and ``datasets`` count them. Record indexes go on
across the files of a folder. CSV cells arrive as text exactly as written (an empty cell is
``""``; pydantic turns ``"3"`` into an int field): each column is read as bytes and decoded
here, so a cell that is not UTF-8 fails its row alone, and so does a row with too few or too
many cells; both become failures at their place, the other rows keep their indexes. A file
whose header names a column twice is refused (pyarrow would read the first one only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import InputError, MissingDependencyError
from .columns import ColumnMap
from .items import InputItem, InputSource, row_item

__all__ = [
    "CSV_BLOCK_BYTES",
    "CSV_MAX_BLOCK_BYTES",
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
"""Bytes per block of the CSV streaming reader (a file with a longer row is read again with
larger blocks, up to :data:`CSV_MAX_BLOCK_BYTES`)."""
CSV_MAX_BLOCK_BYTES = 1 << 30
"""The largest block the CSV reader grows to: a row longer than this is refused."""
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
    pa, pq, _ = pyarrow_modules()
    try:
        if kind == "parquet":
            meta = pq.ParquetFile(path)
            try:
                table = TableFile(path, name, kind, list(meta.schema_arrow.names), meta.metadata.num_rows)
            finally:
                meta.close()
        else:
            table = TableFile(path, name, kind, _csv_header(path, name))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        other = "CSV" if kind == "parquet" else "Parquet"
        raise InputError(
            f"{name} cannot be read as {kind.upper() if kind == 'csv' else 'Parquet'} ({exc}). "
            f"Check that the file is what its name says ({other}? JSONL? rename it to .{other.lower()} or "
            f".jsonl), or that it was written completely."
        ) from exc
    _refuse_duplicate_columns(table)
    return table


def _csv_header(path: Path, name: str) -> list[str]:
    """The header of a CSV file (the first block parsed: its bad rows are met, and counted, when read).

    The block grows while a row does not fit in it, as in :func:`_csv_rows`."""
    pa, _, pacsv = pyarrow_modules()
    block = 1 << 16
    while True:
        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=block),
                parse_options=pacsv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
            )
        except pa.ArrowInvalid as exc:
            if not _straddles(exc):
                raise
            if block >= CSV_MAX_BLOCK_BYTES:
                raise _cell_too_large(name, None, exc) from exc
            block = min(block * 16, CSV_MAX_BLOCK_BYTES)
            continue
        try:
            return list(reader.schema.names)
        finally:
            reader.close()


def _refuse_duplicate_columns(table: TableFile) -> None:
    """pyarrow keeps a repeated column name but reads only the first of them: refuse the file."""
    seen: dict[str, list[int]] = {}
    for position, column in enumerate(table.columns, 1):
        seen.setdefault(column, []).append(position)
    repeated = {column: at for column, at in seen.items() if len(at) > 1}
    if repeated:
        where = "header" if table.kind == "csv" else "schema"
        listed = "; ".join(
            f"{column!r} (columns {', '.join(map(str, at))})" for column, at in repeated.items()
        )
        raise InputError(
            f"{table.name} has more than one column named {listed} in its {where}: only the first would "
            "be read, silently. Rename or remove the extra column(s) in the file, then run again."
        )


def _straddles(exc: BaseException) -> bool:
    """pyarrow's error for a row longer than its block: 'straddling object straddles two block
    boundaries (try to increase block size?)'."""
    return "straddl" in str(exc)


def _cell_too_large(name: str, row: int | None, exc: BaseException) -> InputError:
    where = "near the start of the file" if row is None else f"at or after row {row}"
    return InputError(
        f"{name}: a row {where} is larger than {CSV_MAX_BLOCK_BYTES >> 20} MiB (a cell that "
        f"long, or a quote that is never closed), over the most the CSV reader reads at once (pyarrow's "
        f"block size; {exc}). Check the quotes around that row; if the cell really is that long, convert "
        "the file to Parquet or JSONL, whose rows have no such limit."
    )


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
    """Rows in file order, bad ones (wrong number of cells, not UTF-8) at their place.

    A row longer than the reader's block (a cell over :data:`CSV_BLOCK_BYTES`) makes pyarrow stop:
    the file is then read again with a block 8 times larger (up to :data:`CSV_MAX_BLOCK_BYTES`),
    skipping the rows already handed on, so only files with such rows pay for the larger block."""
    block, done = CSV_BLOCK_BYTES, 0
    while True:
        try:
            for item in _csv_pass(table, cmap, block, skip=done):
                yield item
                done += 1
            return
        except _BlockTooSmall as exc:
            if block >= CSV_MAX_BLOCK_BYTES:
                raise _cell_too_large(table.name, done, exc.__cause__ or exc) from exc.__cause__
            block = min(block * 8, CSV_MAX_BLOCK_BYTES)


class _BlockTooSmall(Exception):
    """A row did not fit in the CSV reader's block."""


def _csv_pass(table: TableFile, cmap: ColumnMap, block: int, *, skip: int) -> Iterator[Row]:
    """One read of the file with blocks of ``block`` bytes, from row ``skip`` on."""
    pa, _, pacsv = pyarrow_modules()
    bad: list[tuple[int | None, str, bytes]] = []

    def on_invalid(invalid: Any) -> str:
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
    try:
        reader = pacsv.open_csv(
            table.path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=block),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.binary() for c in read}, include_columns=read, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        if _straddles(exc):
            raise _BlockTooSmall() from exc
        raise _read_error(table, 0, exc) from exc
    row = 0
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                batch = None
            except (pa.ArrowException, OSError) as exc:
                if _straddles(exc):
                    raise _BlockTooSmall() from exc
                raise _read_error(table, row, exc) from exc
            cells = batch.to_pylist() if batch is not None else []
            bad.sort(key=lambda b: -1 if b[0] is None else b[0])
            for cell_row in cells:
                while bad and bad[0][0] is not None and bad[0][0] <= row:
                    invalid = bad.pop(0)
                    if row >= skip:
                        yield _invalid(table, row, invalid)
                    row += 1
                if row >= skip:
                    yield _decoded(table, row, cmap, cell_row)
                row += 1
            while bad:  # the rest of this block: after its last good row, in order
                invalid = bad.pop(0)
                if row >= skip:
                    yield _invalid(table, row, invalid)
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
