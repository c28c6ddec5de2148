"""Reading a chain's inputs as a stream of chunks, with stable ids and line numbers.

Inputs are a JSONL path or an (async) iterable of models / dicts; Parquet and CSV files, folders
of shards and Hugging Face datasets are opened by :func:`open_inputs` into an
:class:`InputSource` (``tabular.py``, ``shards.py``, ``hf_datasets.py``; pyarrow and datasets are
imported only then). A line that is not valid JSON (a row that cannot be read) becomes an
:class:`InputItem` carrying the error and the line (the runtime writes both to
``failures.jsonl``), or raises :class:`InputError` at once in strict mode. A file is read a few
chunks per worker-thread hop (at most ``READ_AHEAD_LINES`` lines / ``READ_AHEAD_BYTES``, or one
chunk), so memory stays bounded.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import anyio
import orjson
from pydantic import BaseModel

from .._errors import InputError
from .offload import Offload, PinnedOffload

__all__ = [
    "RAW_LIMIT",
    "InputItem",
    "InputSource",
    "describe_inputs",
    "iter_input_chunks",
    "open_inputs",
    "record_id",
    "row_item",
]

READ_AHEAD_LINES = 1024
READ_AHEAD_BYTES = 1 << 20
"""One read (on the loop, or a worker-thread hop once reads are slow: :mod:`.offload`) takes at
least one chunk, and more while under both limits: a hop costs about 0.1 ms on a 2-core machine,
which small chunks would otherwise pay every few lines. Chunks are still yielded one at a time,
so what the chain sees does not change."""
RAW_LIMIT = 10_000
"""Characters of a failed input line kept in ``failures.jsonl`` (``raw``); a longer line is cut,
and says so."""


@dataclass(slots=True)
class InputItem:
    """One input record: its position, value (or why it could not be read) and stable id."""

    index: int
    id: str
    value: Any
    where: str
    """Human pointer for messages: ``inputs.jsonl line 17``, ``data.parquet row 17``, ``dataset train
    row 17`` or ``input #17``."""
    error: str | None = None
    source: bytes | None = None
    """What was read: the JSONL line, or the ``repr`` of an iterable's value that is not a record.
    Only decoded (by :attr:`raw`) when the record fails."""

    @property
    def raw(self) -> str | None:
        """The input as text for ``failures.jsonl``: invalid UTF-8 bytes shown as ``\\xe9``, cut
        at :data:`RAW_LIMIT` characters with a note saying so."""
        if self.source is None:
            return None
        text = self.source.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
        if len(text) <= RAW_LIMIT:
            return text
        return f"{text[:RAW_LIMIT]}... [cut: the line has {len(text):,} characters; the first {RAW_LIMIT:,} are kept]"


def record_id(index: int, content: bytes) -> str:
    """Stable id from position and content: the same input file gives the same ids."""
    return hashlib.blake2b(b"%d:%s" % (index, content), digest_size=8).hexdigest()


def _canonical(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)


def row_item(
    index: int, value: Any, where: str, error: str | None = None, source: bytes | None = None
) -> InputItem:
    """The item for one row of a table or dataset: its id hashes the row as canonical JSON (sorted
    keys), as for a dict given in an iterable, so the same rows give the same ids in every run
    (``source``, when given: what was read instead, for a row that could not be parsed)."""
    content = _canonical(value) if source is None else source
    return InputItem(index, record_id(index, content), value, where, error, content)


class InputSource:
    """An opened input that is not a JSONL file or an iterable: Parquet / CSV files, a folder of
    shards, a Hugging Face dataset. Opening it (:func:`open_inputs`) checked what can be checked
    before any request (the file's kind, the split, the columns); :meth:`items` then reads it.

    Subclasses give :meth:`items`, a blocking iterator of items in input order that holds at
    most a few thousand rows at a time; :meth:`chunks` calls it a hop at a time."""

    name: str = "the input"
    """How messages name it: ``the input file 'data.parquet'``."""
    total: int | None = None
    """Rows, when known without reading them (Parquet footers, a dataset's length)."""

    def items(self) -> Iterator[InputItem]:
        raise NotImplementedError(f"{type(self).__name__}.items")

    async def chunks(self, batch_size: int, strict: bool) -> AsyncIterator[list[InputItem]]:
        """Lists of at most ``batch_size`` items, read ``READ_AHEAD_LINES`` rows (or one chunk) per
        hop; in strict mode the first unreadable row raises, after the chunks before it."""
        reads = PinnedOffload()
        items = self.items()
        per_hop = max(1, READ_AHEAD_LINES // batch_size)
        try:
            while True:
                chunks = await reads.run(_take_chunks, items, batch_size, per_hop)
                for chunk in chunks:
                    bad = next((i for i in chunk if i.error is not None), None) if strict else None
                    if bad is not None:
                        good = chunk[: chunk.index(bad)]
                        if good:
                            yield good
                        raise InputError(bad.error)
                    yield chunk
                if len(chunks) < per_hop or len(chunks[-1]) < batch_size:
                    return
        finally:  # a run that stops reading early (a head ``take``) closes the file now, not at GC
            try:
                close = getattr(items, "close", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await reads.run(close)  # on the thread that was reading it
            finally:
                reads.close()


def _take_chunks(items: Iterator[InputItem], batch_size: int, count: int) -> list[list[InputItem]]:
    chunks: list[list[InputItem]] = []
    for _ in range(count):
        chunk = list(islice(items, batch_size))
        if chunk:
            chunks.append(chunk)
        if len(chunk) < batch_size:
            break
    return chunks


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
            ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict``, or an iterable.
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
        async for lines in _jsonl_chunks(Path(inputs), batch_size, strict):
            yield _renamed(lines, rename) if rename else lines
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
                yield _renamed(chunk, rename) if rename else chunk
                chunk = []
        if chunk:
            yield _renamed(chunk, rename) if rename else chunk
        return
    if isinstance(inputs, Iterable):
        chunk = []
        for index, value in enumerate(inputs):
            chunk.append(_item(index, value))
            if len(chunk) >= batch_size:
                yield _renamed(chunk, rename) if rename else chunk
                chunk = []
        if chunk:
            yield _renamed(chunk, rename) if rename else chunk
        return
    raise InputError(
        f"inputs must be a JSONL path or an iterable of models/dicts, got {type(inputs).__name__}."
    )


def _renamed(chunk: list[InputItem], rename: dict[str, str]) -> list[InputItem]:
    """``columns`` on JSONL lines and dicts: each mapped key renamed to its field (in place; ids
    stay those of what was read)."""
    for item in chunk:
        if isinstance(item.value, dict) and item.error is None:
            item.value = {rename.get(key, key): v for key, v in item.value.items()}
    return chunk


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
    return InputItem(index, record_id(index, _canonical(value)), value, where)


async def _jsonl_chunks(
    path: Path, batch_size: int, strict: bool, name: str | None = None, state: dict[str, int] | None = None
) -> AsyncIterator[list[InputItem]]:
    """The chunks of one JSONL file; ``name`` is how ``where`` names it (default: its file name),
    ``state["index"]`` the index of its first record (a folder of shards goes on counting)."""
    if not await anyio.Path(path).is_file():
        raise InputError(f"Input file {str(path)!r} does not exist (or is not a file).")
    handle = await anyio.to_thread.run_sync(path.open, "rb")
    state = state if state is not None else {"index": 0}
    state["lineno"] = 0
    per_hop = max(1, READ_AHEAD_LINES // batch_size)
    reads = Offload()
    try:
        while True:
            chunks, error, eof = await reads.run(
                _read_chunks, handle, name or path.name, batch_size, strict, state, per_hop
            )
            for chunk in chunks:
                yield chunk
            if error is not None:
                raise error
            if eof:
                return
    finally:
        handle.close()


def _read_chunks(
    handle: Any, name: str, batch_size: int, strict: bool, state: dict[str, int], count: int
) -> tuple[list[list[InputItem]], Exception | None, bool]:
    """Up to ``count`` chunks, the error that stopped reading (raised only after the chunks read
    before it are yielded, as if read one chunk per hop), and whether the file is exhausted."""
    chunks: list[list[InputItem]] = []
    start = handle.tell()
    for _ in range(count):
        try:
            chunk = _read_chunk(handle, name, batch_size, strict, state)
        except Exception as exc:
            return chunks, exc, False
        if not chunk:
            return chunks, None, True
        chunks.append(chunk)
        if handle.tell() - start >= READ_AHEAD_BYTES:
            break
    return chunks, None, False


def _read_chunk(
    handle: Any, name: str, batch_size: int, strict: bool, state: dict[str, int]
) -> list[InputItem]:
    chunk: list[InputItem] = []
    while len(chunk) < batch_size:
        line = handle.readline()
        if not line:
            break
        state["lineno"] += 1
        content = line.strip()
        if not content:
            continue
        index = state["index"]
        state["index"] += 1
        where = f"{name} line {state['lineno']}"
        rid = record_id(index, content)
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            message = (
                _not_utf8(line, where, name)
                or f"{where}: not valid JSON ({exc}). Fix or remove the line, then run again."
            )
            if strict:
                raise InputError(message) from None
            chunk.append(InputItem(index, rid, None, where, message, line))
            continue
        if not isinstance(value, dict):
            message = (
                f"{where}: expected a JSON object, got {type(value).__name__}. Each line must be one object."
            )
            if strict:
                raise InputError(message)
            chunk.append(InputItem(index, rid, value, where, message, line))
            continue
        chunk.append(InputItem(index, rid, value, where, source=line))
    return chunk


def _not_utf8(line: bytes, where: str, name: str) -> str | None:
    """The message for a line that is not UTF-8 (naming the first bad byte), or None if it is."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = line[exc.start]
        return (
            f"{where}: not valid UTF-8 (byte 0x{byte:02x} at byte {exc.start + 1} of the line). JSONL input "
            f"must be UTF-8: convert the file (if it is Latin-1: iconv -f latin1 -t utf-8 {name} > utf8-{name}) "
            "or fix the line, then run again."
        )
    return None
