"""Streaming guarantees: bounded read-ahead (backpressure) and a consistent folder after a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from chainette import Chain, apply


class Num(BaseModel):
    x: int


def test_source_cannot_run_ahead_of_a_slow_stage(run_dir: Path) -> None:
    pulled = 0
    lags: list[int] = []

    def numbers() -> Iterator[Num]:
        nonlocal pulled
        for i in range(300):
            pulled += 1
            yield Num(x=i)

    async def slow(n: Num) -> Num:
        lags.append(pulled - n.x)  # how far the reader is ahead of the record being processed
        await anyio.sleep(0.001)  # really slow: the source gets the loop while a stage waits
        return n

    chain = Chain("c", [apply(slow), apply(slow, id="slow_again")], batch_size=2)
    result = chain.run(numbers(), output_dir=run_dir, buffer=1, max_in_flight=4)
    assert result.counts["records_out"] == 300 and len(lags) == 600
    # Bounded by the chunks the source, the streams (buffer=1 each) and the stages hold, and the
    # records in flight (max_in_flight=4), not by the input size. Without backpressure the source reads all 300 inputs while
    # the first one sleeps (a lag of 296 when the streams are unbounded).
    assert max(lags) <= 12, max(lags)


def test_unknown_run_option_lists_the_known_ones(run_dir: Path) -> None:
    with pytest.raises(TypeError, match="Known run options: overwrite, resume"):
        Chain("c", [apply(lambda n: n, id="same")]).run([], output_dir=run_dir, overwrit=True)


def test_crash_mid_run_leaves_a_consistent_folder(run_dir: Path) -> None:
    def numbers() -> Iterator[Num]:
        for i in range(100):
            if i == 70:
                raise RuntimeError("disk on fire")
            yield Num(x=i)

    def double(n: Num) -> Num:
        return Num(x=n.x * 2)

    with pytest.raises(RuntimeError, match="disk on fire"):
        Chain("c", [apply(double)], batch_size=10).run(numbers(), output_dir=run_dir)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "failed" and "disk on fire" in meta["error"]
    rows = [json.loads(line) for line in (run_dir / "flattened" / "000.jsonl").read_text().splitlines()]
    # what was written before the crash is correct, written once, and matches the metadata
    assert [r["double.x"] for r in rows] == [2 * r["input.x"] for r in rows]
    assert len({r["_id"] for r in rows}) == len(rows) <= 70
    assert meta["counts"]["records_out"] == len(rows)
