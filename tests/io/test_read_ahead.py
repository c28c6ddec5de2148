"""Reading several chunks per worker-thread hop changes nothing a chain can see."""

from __future__ import annotations

import io
import json
from pathlib import Path

import anyio
import orjson
import pytest

from chainette import InputError
from chainette.io import jsonl
from chainette.io.inputs import InputItem, iter_input_chunks, record_id


async def _collect(path: Path, batch_size: int, strict: bool) -> tuple[list[list[InputItem]], str | None]:
    chunks: list[list[InputItem]] = []
    try:
        async for chunk in iter_input_chunks(path, batch_size, strict=strict):
            chunks.append(chunk)
    except InputError as exc:
        return chunks, str(exc)
    return chunks, None


def _lines(n: int, bad: dict[int, str]) -> str:
    return "".join(bad.get(i, json.dumps({"n": i})) + "\n" for i in range(n))


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000, 1024, 3000])
def test_chunks_span_read_ahead_hops_unchanged(tmp_path: Path, batch_size: int) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(_lines(2500, {5: "", 1500: "{oops", 2047: "[1]"}))
    chunks, error = anyio.run(_collect, src, batch_size, False)
    assert error is None
    sizes = [len(c) for c in chunks]
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    items = [item for chunk in chunks for item in chunk]
    assert [i.index for i in items] == list(range(2499))  # the blank line is not a record
    lines = src.read_bytes().splitlines()
    content = [line for line in lines if line.strip()]
    assert [i.id for i in items] == [record_id(k, c) for k, c in enumerate(content)]
    by_line = {int(i.where.rsplit(" ", 1)[1]): i for i in items}
    assert "not valid JSON" in (by_line[1501].error or "") and "expected a JSON object" in (
        by_line[2048].error or ""
    )
    assert by_line[2500].value == {"n": 2499}


def test_strict_error_comes_after_the_chunks_before_it(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(_lines(2000, {1500: "{oops"}))
    chunks, error = anyio.run(_collect, src, 10, True)
    assert error is not None and "in.jsonl line 1501: not valid JSON" in error
    # every chunk before the one holding the bad line, none after: as when reading one chunk per hop
    assert [i.index for c in chunks for i in c] == list(range(1500 // 10 * 10))


def test_read_ahead_stops_at_the_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = io.BytesIO(b"".join(orjson.dumps({"text": "x" * 100}) + b"\n" for _ in range(50)))
    monkeypatch.setattr(jsonl, "READ_AHEAD_BYTES", 250)
    state = {"lineno": 0, "index": 0}
    chunks, error, eof = jsonl._read_chunks(handle, "in.jsonl", 1, False, state, count=40)
    assert error is None and not eof and len(chunks) == 3  # stopped by bytes, not by count
    chunks, error, eof = jsonl._read_chunks(handle, "in.jsonl", 20, False, state, count=40)
    assert not eof and [len(c) for c in chunks] == [20]  # at least one chunk, however large
    monkeypatch.setattr(jsonl, "READ_AHEAD_BYTES", 1 << 20)
    chunks, error, eof = jsonl._read_chunks(handle, "in.jsonl", 20, False, state, count=40)
    assert eof and [len(c) for c in chunks] == [20, 7] and state == {"lineno": 50, "index": 50}
