"""Reading a chain's inputs as a stream of chunks, with stable ids and line numbers.

Inputs are a JSONL path or an (async) iterable of models / dicts. A line that is not valid JSON
becomes an :class:`InputItem` carrying the error and the line (the runtime writes both to
``failures.jsonl``), or raises :class:`InputError` at once in strict mode. A JSONL file is read a few chunks per
worker-thread hop (at most ``READ_AHEAD_LINES`` lines / ``READ_AHEAD_BYTES``, or one chunk), so
memory stays bounded.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
from pydantic import BaseModel

from .._errors import InputError
from .offload import Offload

__all__ = ["RAW_LIMIT", "InputItem", "iter_input_chunks", "record_id"]

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
    """Human pointer for messages: ``inputs.jsonl line 17`` or ``input #17``."""
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
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)


async def iter_input_chunks(
    inputs: Any, batch_size: int, *, strict: bool = False
) -> AsyncIterator[list[InputItem]]:
    """Yield lists of at most ``batch_size`` input items."""
    if isinstance(inputs, (str, Path)):
        async for lines in _jsonl_chunks(Path(inputs), batch_size, strict):
            yield lines
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
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    if isinstance(inputs, Iterable):
        chunk = []
        for index, value in enumerate(inputs):
            chunk.append(_item(index, value))
            if len(chunk) >= batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
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
    return InputItem(index, record_id(index, _canonical(value)), value, where)


async def _jsonl_chunks(path: Path, batch_size: int, strict: bool) -> AsyncIterator[list[InputItem]]:
    if not await anyio.Path(path).is_file():
        raise InputError(f"Input file {str(path)!r} does not exist (or is not a file).")
    handle = await anyio.to_thread.run_sync(path.open, "rb")
    state = {"lineno": 0, "index": 0}
    per_hop = max(1, READ_AHEAD_LINES // batch_size)
    reads = Offload()
    try:
        while True:
            chunks, error, eof = await reads.run(
                _read_chunks, handle, path.name, batch_size, strict, state, per_hop
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
