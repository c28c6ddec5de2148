"""``RunResult``: where a finished run lives, its counts, and lazy readers for its files."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import RunFolderError

if TYPE_CHECKING:
    from .record_trace import RecordTrace

__all__ = ["RunResult", "read_rows"]

_log = logging.getLogger("chainette")


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

    def to_dataset(self, node_id: str | None = None, *, cache_dir: str | Path | None = None) -> Any:
        """The run's flattened rows (or one node's rows) as a Hugging Face ``datasets.Dataset``.

        Built by ``datasets`` from the run's files (``Dataset.from_json`` / ``from_parquet`` /
        ``from_csv``): converted once into Arrow files in its cache and memory-mapped from there,
        so a result of any size is never held in memory. The cache is ``datasets``' own
        (``$HF_DATASETS_CACHE``, ``~/.cache/huggingface/datasets``) or ``cache_dir``; never the run
        folder, which holds only what the run wrote (``io/layout.py`` refuses anything else on
        ``overwrite`` / ``resume``). Rewritten files (a resumed run) are converted again.

        Example:
            >>> ds = chain.run(records, output_dir="runs/demo").to_dataset()   # doctest: +SKIP
            >>> ds.push_to_hub("me/demo")                                      # doctest: +SKIP

        Raises:
            MissingDependencyError: ``datasets`` is not installed (``pip install 'chainette[datasets]'``).
            ValueError: ``cache_dir`` is inside the run folder.
        """
        try:
            import datasets
        except ImportError as exc:
            from .._errors import MissingDependencyError

            raise MissingDependencyError(
                "to_dataset needs the datasets package. Install it with: pip install 'chainette[datasets]'"
            ) from exc
        folder = self.path / (node_id or "flattened")
        files = (
            sorted(str(p) for p in folder.iterdir() if p.suffix == f".{self.fmt}") if folder.is_dir() else []
        )
        if cache_dir is not None and Path(cache_dir).resolve().is_relative_to(self.path.resolve()):
            raise ValueError(
                f"cache_dir {str(cache_dir)!r} is inside the run folder {str(self.path)!r}, which holds only what "
                "the run writes (a later overwrite or resume would refuse the folder): choose another folder."
            )
        if not files or all(Path(f).stat().st_size == 0 for f in files):
            return datasets.Dataset.from_dict({})
        cache = None if cache_dir is None else str(cache_dir)
        build = {"jsonl": datasets.Dataset.from_json, "parquet": datasets.Dataset.from_parquet}.get(
            self.fmt, datasets.Dataset.from_csv
        )
        return build(files, cache_dir=cache)


def read_rows(path: Path, fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
    """Iterate the rows of a file, or of every part file in a folder (in part order).

    A JSONL or CSV file's last line that does not end with a newline was cut short (the run
    stopped while writing it: a full disk, a killed process): it never held a whole row, so it is
    skipped, with a warning naming the file and line. A line that does not parse anywhere else
    raises :class:`~chainette.RunFolderError` naming the file and line.
    """
    files = sorted(p for p in path.iterdir() if p.suffix == f".{fmt}") if path.is_dir() else [path]
    for file in files:
        if fmt == "jsonl":
            yield from _jsonl_rows(file)
        elif fmt == "csv":
            yield from _csv_rows(file)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(file).to_pylist()
        else:
            raise ValueError(f"unknown format {fmt!r}")


def _jsonl_rows(file: Path) -> Iterator[dict[str, Any]]:
    with file.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                if not line.endswith(b"\n"):  # only the last line can lack one
                    _cut_line(file, number)
                    return
                raise RunFolderError(
                    f"{file} line {number} is not valid JSON ({exc}). The file was changed or damaged after "
                    "the run wrote it: fix or remove that line, or run the chain again with --resume "
                    "(resume=True), which rewrites the run folder."
                ) from exc
            yield row


def _csv_rows(file: Path) -> Iterator[dict[str, Any]]:
    cut = _ends_cut(file)
    with file.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        held: dict[str, Any] | None = None  # held back: the last row may be the cut one
        for row in reader:
            if held is not None:
                yield held
            held = row
        if held is not None and cut:
            _cut_line(file, reader.line_num)
        elif held is not None:
            yield held


def _ends_cut(file: Path) -> bool:
    """Does the file end in the middle of a line (a CSV writer ends every row with a newline)?"""
    with file.open("rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def _cut_line(file: Path, number: int) -> None:
    _log.warning(
        "%s line %d was cut short (the run stopped while writing it, e.g. on a full disk): skipped, "
        "it never held a whole row.",
        file,
        number,
    )
