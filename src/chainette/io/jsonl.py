"""Reading a JSONL file as chunks of :class:`~chainette.io.items.InputItem`, a few chunks per hop.

A line that is not valid JSON (not UTF-8, not an object) becomes an item carrying the error and
the line (the runtime writes both to ``failures.jsonl``), or raises :class:`InputError` at once
in strict mode. A file is read a few chunks per hop (on the loop while reads are quick, on a
worker thread once slow: :mod:`.offload`), at most ``READ_AHEAD_LINES`` lines /
:data:`READ_AHEAD_BYTES`, or one chunk, so memory stays bounded. Used by ``inputs.py`` (a JSONL
path) and ``shards.py`` (a folder of JSONL shards).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson

from .._errors import InputError
from .items import READ_AHEAD_LINES, InputItem, record_id
from .offload import Offload

__all__ = ["READ_AHEAD_BYTES", "jsonl_chunks"]

READ_AHEAD_BYTES = 1 << 20
"""Bytes of a JSONL file one read takes at most (and at least one chunk), beside
:data:`~chainette.io.items.READ_AHEAD_LINES`."""


async def jsonl_chunks(
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
    append, readline, loads = chunk.append, handle.readline, orjson.loads
    index, lineno = state["index"], state["lineno"]  # kept in locals: this runs per line
    try:
        while len(chunk) < batch_size:
            line = readline()
            if not line:
                break
            lineno += 1
            content = line.strip()
            if not content:
                continue
            rid = record_id(index, content)
            index += 1
            where = f"{name} line {lineno}"
            try:
                value = loads(content)
            except orjson.JSONDecodeError as exc:
                message = (
                    _not_utf8(line, where, name)
                    or f"{where}: not valid JSON ({exc}). Fix or remove the line, then run again."
                )
                if strict:
                    raise InputError(message) from None
                append(InputItem(index - 1, rid, None, where, message, line))
                continue
            if not isinstance(value, dict):
                message = f"{where}: expected a JSON object, got {type(value).__name__}. Each line must be one object."
                if strict:
                    raise InputError(message)
                append(InputItem(index - 1, rid, value, where, message, line))
                continue
            append(InputItem(index - 1, rid, value, where, None, line))
    finally:
        state["index"], state["lineno"] = index, lineno
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
