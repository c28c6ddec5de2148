"""An input given by path: which reader a file or a folder goes to, and a folder's splits.

- ``*.parquet`` / ``*.pq`` → Parquet, ``*.csv`` → CSV (``tabular.py``); any other file is JSONL,
  as it always was, except a text or Markdown file (``.md``, ``.txt``, ...) whose first line is not
  a JSON object: it is refused, naming ``--per file|paragraph|line`` / ``text_files`` (``text_files.py``),
  before any record is read.
- A folder written by ``datasets``' ``save_to_disk`` (``dataset_dict.json`` or ``state.json``)
  → ``hf_datasets.py``.
- Any other folder: its data files (``.parquet``, ``.csv`` or ``.jsonl``, one kind, found in
  subfolders too, hidden ones skipped), read in path order as one input. Their names may name
  splits the way ``datasets`` recognises them (``train.parquet``, ``data/test-00000-of-00002.parquet``,
  ``validation/part-1.csv``): then ``split`` picks one, and is needed when there are several.
  A folder whose names name none is one split, ``train``, as for ``datasets.load_dataset``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from pydantic import BaseModel

from .._errors import InputError
from .columns import resolve_columns
from .items import InputItem, InputSource, renamed
from .jsonl import jsonl_chunks

__all__ = ["DATA_SUFFIXES", "JsonlShards", "file_kind", "open_path", "split_of"]

DATA_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl"}

_SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
"""The keywords ``datasets`` infers split names from (its ``data_files.py``)."""
_HUB_SHARD = re.compile(r"^(?P<split>\w+?)-\d{5}-of-\d{5}")
"""``train-00000-of-00003.parquet``: how the Hub names a split's shards, any split name."""
_WORD = re.compile(r"[-._ 0-9]+")
_TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".rst"})
"""Suffixes of prose: such a file is read as JSONL only when its first line is a JSON object."""


def file_kind(path: Path) -> str:
    """``parquet``, ``csv`` or ``jsonl``, by the file's suffix (anything else reads as JSONL)."""
    return DATA_SUFFIXES.get(path.suffix.lower(), "jsonl")


def _refuse_prose(path: Path) -> None:
    """Refuse a text or Markdown file that is not JSONL, saying how to read it as text."""
    if path.suffix.lower() not in _TEXT_SUFFIXES:
        return
    with path.open("rb") as handle:
        first = next((line.strip() for line in handle if line.strip()), b"")
    if not first or first.startswith(b"{"):
        return  # empty, or JSONL written under a .txt name: read as JSONL, as before
    raise InputError(
        f"Input file {str(path)!r} is a text or Markdown file, not JSONL (its first line is not a JSON "
        "object). To read its text, add --per file|paragraph|line (one record per file, per paragraph "
        f"or per line, with fields text, path, part); from Python, pass text_files({str(path)!r}, "
        "per='paragraph'). For records, pass a JSONL, Parquet or CSV file."
    )


def split_of(relative: Path) -> str | None:
    """The split a data file's path names, or None (``data/train-00000-of-00001.parquet`` →
    ``train``, ``valid/x.csv`` → ``validation``)."""
    hub = _HUB_SHARD.match(relative.name)
    if hub:
        return hub.group("split")
    words = [p.lower() for p in relative.parts[:-1]] + [w.lower() for w in _WORD.split(relative.stem) if w]
    for split, keywords in _SPLIT_WORDS.items():
        if any(w in keywords for w in words):
            return split
    return None


class JsonlShards(InputSource):
    """JSONL files read one after another, indexes going on across them."""

    def __init__(self, files: list[tuple[Path, str]], name: str, columns: Mapping[str, str] | None) -> None:
        self.files = files
        self.name = name
        self.rename = {column: field for field, column in (columns or {}).items() if column != field}

    async def chunks(self, batch_size: int, strict: bool) -> AsyncIterator[list[InputItem]]:
        state = {"index": 0}
        for path, shown in self.files:
            async for chunk in jsonl_chunks(path, batch_size, strict, shown, state):
                yield renamed(chunk, self.rename) if self.rename else chunk


def open_path(
    path: Path,
    *,
    split: str | None,
    columns: Mapping[str, str] | None,
    model: type[BaseModel] | None,
) -> Path | InputSource:
    """The JSONL path itself, or the :class:`InputSource` that reads the file or folder."""
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            from .hf_datasets import open_saved

            return open_saved(path, split=split, columns=columns, model=model)
        return _open_folder(path, split, columns, model)
    if not path.is_file():
        raise InputError(
            f"Input file {str(path)!r} does not exist (or is not a file; looked in {Path.cwd()}). "
            "Pass a JSONL, Parquet or CSV file, or a folder of them."
        )
    kind = file_kind(path)
    if split is not None:
        raise InputError(
            f"split={split!r} was given, but {path.name} is one file, which has no splits: drop split, "
            "or pass the folder that holds a file per split."
        )
    if kind == "jsonl":
        _refuse_prose(path)
        return path
    return _tabular([(path, path.name)], kind, columns, model, f"the input file {str(path)!r}")


def _tabular(
    files: list[tuple[Path, str]],
    kind: str,
    columns: Mapping[str, str] | None,
    model: type[BaseModel] | None,
    name: str,
) -> InputSource:
    from .tabular import TabularInput, open_table

    tables = [open_table(p, shown, kind) for p, shown in files]
    maps = [resolve_columns(t.name, t.columns, model, columns) for t in tables]
    first = maps[0]
    for table, cmap in zip(tables[1:], maps[1:], strict=True):
        if cmap.read is not None and first.read is not None and cmap.read != first.read:
            missing = sorted(set(first.read) - set(cmap.read))
            raise InputError(
                f"{table.name} has other columns than {tables[0].name}"
                + (f" (it lacks {', '.join(map(repr, missing))})" if missing else "")
                + ": the shards of one input must share their columns."
            )
    return TabularInput(tables, first, name)


def _open_folder(
    folder: Path, split: str | None, columns: Mapping[str, str] | None, model: type[BaseModel] | None
) -> InputSource | Path:
    found: dict[str, list[Path]] = {}
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if any(part.startswith((".", "_")) for part in relative.parts) or not file.is_file():
            continue
        kind = DATA_SUFFIXES.get(file.suffix.lower())
        if kind is not None:
            found.setdefault(kind, []).append(relative)
    if not found:
        raise InputError(
            f"The folder {str(folder)!r} holds no .parquet, .csv or .jsonl file (nor a dataset written by "
            "save_to_disk). Pass a folder of data files, or one file."
        )
    if len(found) > 1:
        counts = ", ".join(f"{len(v)} .{k}" for k, v in sorted(found.items()))
        raise InputError(
            f"The folder {str(folder)!r} mixes kinds of files ({counts}): keep one kind per folder, or pass "
            "one file."
        )
    [(kind, files)] = found.items()
    by_split: dict[str, list[Path]] = {}
    for relative in files:
        by_split.setdefault(split_of(relative) or "", []).append(relative)
    named = sorted(s for s in by_split if s)
    if not named:
        if split not in (None, "train"):
            raise InputError(
                f"split={split!r} was given, but the names of the files in {str(folder)!r} name no split, "
                "so the folder is one split, 'train': drop split (or give split='train')."
            )
        chosen, label = files, ""
    else:
        if split is None:
            if len(named) > 1:
                raise InputError(
                    f"The folder {str(folder)!r} holds the splits {', '.join(map(repr, named))}: pick one with "
                    f"split= (CLI: --split {named[0]})."
                )
            split = named[0]
        if split not in by_split or not split:
            close = difflib.get_close_matches(split, named, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(
                f"The folder {str(folder)!r} has no split {split!r}{hint}; its splits: {', '.join(map(repr, named))}."
            )
        chosen, label = by_split[split], f" (split {split!r})"
    shown = [(folder / r, f"{folder.name}/{r.as_posix()}") for r in chosen]
    name = f"the folder {str(folder)!r}{label}"
    if kind == "jsonl":
        return JsonlShards(shown, name, columns)
    return _tabular(shown, kind, columns, model, name)
