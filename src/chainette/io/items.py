"""The bottom of input reading: what one input record is, and what an opened input reads.

:class:`InputItem` (one record, its stable id, or why it could not be read) and
:class:`InputSource` (an opened Parquet / CSV file, folder of shards or dataset, read a few
chunks per worker-thread hop) are shared by the readers (``jsonl.py``, ``tabular.py``,
``shards.py``, ``hf_datasets.py``) and the opener on top of them (``inputs.py``), which
re-exports them. This module imports none of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import anyio
import orjson
from pydantic import BaseModel

from .._errors import InputError
from .offload import PinnedOffload

__all__ = [
    "RAW_LIMIT",
    "READ_AHEAD_LINES",
    "InputItem",
    "InputSource",
    "canonical",
    "record_id",
    "renamed",
    "row_item",
]

READ_AHEAD_LINES = 1024
"""One read (on the loop, or a worker-thread hop once reads are slow: :mod:`.offload`) takes at
least one chunk, and more while under this many lines (and, for a JSONL file,
:data:`~chainette.io.jsonl.READ_AHEAD_BYTES`): a hop costs about 0.1 ms on a 2-core machine,
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


def canonical(value: Any) -> bytes:
    """A record as canonical JSON (sorted keys): what the id of a dict, model or row hashes."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)


def row_item(
    index: int, value: Any, where: str, error: str | None = None, source: bytes | None = None
) -> InputItem:
    """The item for one row of a table or dataset: its id hashes the row as canonical JSON (sorted
    keys), as for a dict given in an iterable, so the same rows give the same ids in every run
    (``source``, when given: what was read instead, for a row that could not be parsed)."""
    content = canonical(value) if source is None else source
    return InputItem(index, record_id(index, content), value, where, error, content)


def renamed(chunk: list[InputItem], rename: dict[str, str]) -> list[InputItem]:
    """``columns`` on JSONL lines and dicts: each mapped key renamed to its field (in place; ids
    stay those of what was read)."""
    for item in chunk:
        if isinstance(item.value, dict) and item.error is None:
            item.value = {rename.get(key, key): v for key, v in item.value.items()}
    return chunk


class InputSource:
    """An opened input that is not a JSONL file or an iterable: Parquet / CSV files, a folder of
    shards, a Hugging Face dataset. Opening it (:func:`~chainette.io.inputs.open_inputs`) checked
    what can be checked before any request (the file's kind, the split, the columns);
    :meth:`items` then reads it.

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
