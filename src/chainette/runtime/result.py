"""``RunResult``: where a finished run lives, its counts, and lazy readers for its files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .record_trace import RecordTrace

__all__ = ["RunResult", "read_rows"]


@dataclass
class RunResult:
    """A finished run. Rows are read back from disk lazily, so results of any size are fine.

    Example:
        >>> result = chain.run(records, output_dir="runs/demo")        # doctest: +SKIP
        >>> for row in result.outputs("qa"):                             # doctest: +SKIP
        ...     print(row["_id"], row["answer"])
    """

    path: Path
    run_id: str
    metadata: dict[str, Any] = field(repr=False)
    fmt: str = "jsonl"
    trace: RecordTrace | None = field(default=None, repr=False)
    """Per input record: node spans and tokens, when the run was asked for them (``record_trace``)."""

    @property
    def counts(self) -> dict[str, int]:
        """``records_in``, ``records_out`` (flattened rows), ``failures``, ``filtered``."""
        counts: dict[str, int] = self.metadata["counts"]
        return counts

    def outputs(self, node_id: str) -> Iterator[dict[str, Any]]:
        """Rows of ``<run>/<node_id>/`` in file order."""
        return read_rows(self.path / node_id, self.fmt)

    def flattened(self) -> Iterator[dict[str, Any]]:
        """Rows of ``<run>/flattened/``: one per record that reached the end of the chain."""
        return read_rows(self.path / "flattened", self.fmt)

    def failures(self) -> Iterator[dict[str, Any]]:
        """Rows of ``failures.jsonl``: every record that failed, with node and reason."""
        return read_rows(self.path / "failures.jsonl", "jsonl")


def read_rows(path: Path, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
    """Iterate the rows of a file, or of every part file in a folder (in part order)."""
    files = sorted(p for p in path.iterdir() if p.suffix == f".{fmt}") if path.is_dir() else [path]
    for file in files:
        if fmt == "jsonl":
            with file.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)
        elif fmt == "csv":
            with file.open(newline="", encoding="utf-8") as fh:
                yield from csv.DictReader(fh)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(file).to_pylist()
        else:
            raise ValueError(f"unknown format {fmt!r}")
