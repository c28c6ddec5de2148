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
