"""One named output file (a chain's ``Sink`` node): JSONL, CSV or Parquet by its suffix.

Unlike a node's folder of rolling parts (``sinks.py``), this is one file the user named, written
in blocks as the run writer flushes (on its flush thread) and closed when the run ends. Its
columns are fixed by the first rows: a CSV's header, a Parquet file's schema (a column whose
first values are all null is kept as text). The sink's runner hands it rows of the same keys
only, so nothing is dropped.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import orjson

from .._errors import MissingDependencyError
from .sinks import Sink, _append

__all__ = ["FILE_FORMATS", "file_format", "open_file_sink"]

FILE_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
"""A sink file's suffix → its format."""


def file_format(path: str | Path) -> str | None:
    """``jsonl`` / ``csv`` / ``parquet`` by the file's suffix, or None."""
    return FILE_FORMATS.get(Path(path).suffix.lower())


class _FileSink(Sink):
    def __init__(self, path: Path) -> None:
        super().__init__(path.parent, None, name=lambda part: path.name)
        self.file = path


class _JsonlFile(_FileSink):
    def _write(self, rows: list[dict[str, Any]]) -> int:
        _append(self.file, b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows))
        return len(rows)


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (dict, list)) else value


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class _CsvFile(_FileSink):
    header: list[str] | None = None

    def _write(self, rows: list[dict[str, Any]]) -> int:
        text = io.StringIO(newline="")
        if self.header is None:
            self.header = list(rows[0])
            writer = csv.DictWriter(text, fieldnames=self.header, extrasaction="ignore")
            writer.writeheader()
        else:
            writer = csv.DictWriter(text, fieldnames=self.header, extrasaction="ignore")
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        _append(self.file, text.getvalue().encode("utf-8"))
        return len(rows)


class _ParquetFile(_FileSink):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise MissingDependencyError(
                "A Parquet sink needs pyarrow. Install it with: pip install 'chainette[parquet]'"
            ) from exc
        self._pa, self._pq = pa, pq
        self._writer: Any = None
        self._schema: Any = None

    def _write(self, rows: list[dict[str, Any]]) -> int:
        pa = self._pa
        if self._writer is None:
            table = pa.Table.from_pylist(rows)
            schema = pa.schema(
                pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema
            )
            self._writer = self._pq.ParquetWriter(self.file, schema)
            self._schema = schema
        schema = self._schema
        texts = {f.name for f in schema if pa.types.is_string(f.type)}
        fitted = [
            {
                k: _text(v) if k in texts and v is not None and not isinstance(v, str) else v
                for k, v in r.items()
            }
            for r in rows
        ]
        self._writer.write_table(pa.Table.from_pylist(fitted, schema=schema))
        return len(rows)

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_KINDS: dict[str, type[_FileSink]] = {"jsonl": _JsonlFile, "csv": _CsvFile, "parquet": _ParquetFile}


def open_file_sink(path: Path) -> Sink:
    """The sink of one output file, started empty (a file left by an earlier run is replaced)."""
    fmt = file_format(path)
    if fmt is None:
        raise ValueError(f"{str(path)!r}: a sink file ends in one of {', '.join(FILE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sink = _KINDS[fmt](path)
    if fmt != "parquet":
        path.touch()
    return sink
