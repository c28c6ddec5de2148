"""Reading a chain's inputs as a stream of chunks, with stable ids and line numbers: the opener on
top of the readers.

Inputs are a JSONL path or an (async) iterable of models / dicts; Parquet and CSV files, folders
of shards and Hugging Face datasets are opened by :func:`open_inputs` into an
:class:`InputSource` (``shards.py`` picks the reader of a path: ``tabular.py``,
``hf_datasets.py``; pyarrow and datasets are imported only then). A JSONL file is read by
``jsonl.py``; what every reader makes, :class:`InputItem`, and :class:`InputSource` live in
``items.py`` (re-exported here). This module imports the readers; none of them imports it.
A line that is not valid JSON (a row that cannot be read) becomes an :class:`InputItem`
carrying the error and the line (the runtime writes both to ``failures.jsonl``), or raises
:class:`InputError` at once in strict mode.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from .._errors import InputError
from .items import (
    RAW_LIMIT,
    READ_AHEAD_LINES,
    InputItem,
    InputSource,
    canonical,
    record_id,
    renamed,
    row_item,
)
from .jsonl import READ_AHEAD_BYTES, jsonl_chunks
from .text_files import TextFiles, open_text_files

HF_PREFIX = "hf:"
"""``"hf:<name>"`` as inputs: a Hugging Face dataset by name (or a local dataset folder), loaded
with ``datasets.load_dataset``; a path that really starts with ``hf:`` is written ``./hf:...``."""

__all__ = [
    "HF_PREFIX",
    "RAW_LIMIT",
    "READ_AHEAD_BYTES",
    "READ_AHEAD_LINES",
    "InputItem",
    "InputSource",
    "describe_inputs",
    "iter_input_chunks",
    "open_inputs",
    "record_id",
    "row_item",
]


def open_inputs(
    inputs: Any,
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    model: type[BaseModel] | None = None,
) -> Any:
    """Check ``inputs`` and open what needs opening, before the run folder or any request exists.

    Returns an :class:`InputSource` for Parquet / CSV files, folders and Hugging Face datasets;
    a JSONL path or an iterable comes back as it is. Blocking (footers, headers, a dataset's
    files): the runtime calls it in a worker thread.

    Args:
        inputs: A path (JSONL, Parquet, CSV, a folder of shards, a ``save_to_disk`` folder), a
            ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict``, ``"hf:<name>"`` (a
            dataset by name, through ``datasets.load_dataset``), text files
            (:func:`~chainette.io.text_files.text_files`), or an iterable.
        split: The split to read from a dataset with several (``"train"``).
        columns: ``{field: column}``: the column each field of the input model reads (other
            fields read the column of their own name).
        model: The chain's input model: its required fields must have a column, and only the
            columns it reads are read.

    Raises:
        InputError: A missing file, a file that is not what its name says, an unknown split or
            column (with the names there are), or ``split`` for an input that has none.
    """
    if isinstance(inputs, InputSource):
        return inputs
    columns = _check_columns_option(columns)
    if isinstance(inputs, TextFiles):
        if split is not None:
            raise InputError(f"split={split!r} was given, but text files have no splits: drop split.")
        return open_text_files(inputs, columns=columns, model=model)
    if isinstance(inputs, str) and inputs.startswith(HF_PREFIX):
        from .hf_datasets import open_named

        return open_named(inputs[len(HF_PREFIX) :], split=split, columns=columns, model=model)
    if isinstance(inputs, (str, Path)):
        from .shards import open_path

        return open_path(Path(inputs), split=split, columns=columns, model=model)
    from .hf_datasets import is_hf_dataset, open_dataset

    if is_hf_dataset(inputs):
        return open_dataset(inputs, split=split, columns=columns, model=model)
    if split is not None:
        raise InputError(
            f"split={split!r} was given, but the input is a {type(inputs).__name__}, which has no splits: "
            "drop split, or pass a dataset with splits (a DatasetDict, a save_to_disk folder)."
        )
    return inputs


def _check_columns_option(columns: Mapping[str, str] | None) -> dict[str, str] | None:
    if columns is None:
        return None
    if not isinstance(columns, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in columns.items()
    ):
        raise InputError(
            f"columns must map field names to column names, like {{'text': 'content'}}; got {columns!r}."
        )
    return dict(columns)


def describe_inputs(inputs: Any) -> str:
    """``the input file 'x.parquet'``, ``the dataset 'train'``, ``the input``: for messages."""
    if isinstance(inputs, InputSource):
        return inputs.name
    if isinstance(inputs, TextFiles):
        return f"the text files {inputs.pattern!r}"
    if isinstance(inputs, str) and inputs.startswith(HF_PREFIX):
        return f"the dataset {inputs[len(HF_PREFIX) :]!r}"
    if isinstance(inputs, (str, Path)):
        return f"the input file {str(inputs)!r}"
    return "the input"


async def iter_input_chunks(
    inputs: Any,
    batch_size: int,
    *,
    strict: bool = False,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    model: type[BaseModel] | None = None,
) -> AsyncGenerator[list[InputItem], None]:
    """Yield lists of at most ``batch_size`` input items (see :func:`open_inputs` for the options;
    ``inputs`` may be what it returned)."""
    if not isinstance(inputs, InputSource):
        inputs = await anyio.to_thread.run_sync(
            functools.partial(open_inputs, inputs, split=split, columns=columns, model=model)
        )
    rename = {column: field for field, column in (columns or {}).items() if column != field}
    if isinstance(inputs, InputSource):
        async for part in inputs.chunks(batch_size, strict):
            yield part
        return
    if isinstance(inputs, (str, Path)):
        async for lines in jsonl_chunks(Path(inputs), batch_size, strict):
            yield renamed(lines, rename) if rename else lines
        return
    if isinstance(inputs, (dict, BaseModel)):
        raise InputError(
            "inputs must be a JSONL path or an iterable of records; wrap a single record in a list."
        )
    if isinstance(inputs, AsyncIterable):
        chunk: list[InputItem] = []
        index = 0
        async for value in inputs:
            chunk.append(_item(index, value))
            index += 1
            if len(chunk) >= batch_size:
                yield renamed(chunk, rename) if rename else chunk
                chunk = []
        if chunk:
            yield renamed(chunk, rename) if rename else chunk
        return
    if isinstance(inputs, Iterable):
        chunk = []
        for index, value in enumerate(inputs):
            chunk.append(_item(index, value))
            if len(chunk) >= batch_size:
                yield renamed(chunk, rename) if rename else chunk
                chunk = []
        if chunk:
            yield renamed(chunk, rename) if rename else chunk
        return
    raise InputError(
        f"inputs must be a JSONL path or an iterable of models/dicts, got {type(inputs).__name__}."
    )


def _item(index: int, value: Any) -> InputItem:
    where = f"input #{index}"
    if not isinstance(value, (dict, BaseModel)):
        shown = repr(value).encode()
        return InputItem(
            index,
            record_id(index, shown),
            None,
            where,
            f"{where}: expected a dict or a pydantic model, got {type(value).__name__}.",
            shown,
        )
    return InputItem(index, record_id(index, canonical(value)), value, where)
