"""The ledger on the real embedded engine: duplicates, samples at temperature, reruns, stay failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from tests.helpers import Question, read_jsonl

from chainette import Chain, SamplingParams, Step, register_engine

pytestmark = pytest.mark.llama


class Color(BaseModel):
    color: str = Field(max_length=20)


@pytest.fixture(autouse=True)
def local_engine() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024)


def step(**kw: object) -> Step:
    return Step(
        id="color",
        input_model=Question,
        output_model=Color,
        engine_name="local",
        user_prompt="{{ text }}",
        **kw,  # type: ignore[arg-type]
    )


def test_samples_duplicates_and_reruns_on_llama_cpp(tmp_path: Path) -> None:
    sampled = step(sampling=SamplingParams(temperature=1.0, seed=3, max_tokens=24), samples=3)
    inputs = [Question(text="Name a color."), Question(text="Name a color.")]  # a duplicate record
    first = Chain("colors", [sampled]).run(inputs, tmp_path / "a")
    rows = read_jsonl(tmp_path / "a" / "color")
    assert len(rows) == 6 and first.counts["failures"] == 0
    # 3 samples of one prompt are 3 requests (own seeds, own keys); the duplicate record sends nothing
    assert (
        first.metadata["cache"]["sent"] == 3
        and first.metadata["cache"]["hits"] + first.metadata["cache"]["deduped"] == 3
    )
    by_sample = {r["_id"].rsplit(".", 1)[1]: r["color"] for r in rows}
    assert all(r["color"] == by_sample[r["_id"].rsplit(".", 1)[1]] for r in rows)  # duplicates share answers
    again = Chain("colors", [sampled]).run(inputs, tmp_path / "b")
    assert again.metadata["cache"]["sent"] == 0 and again.metadata["cache"]["hits"] == 6
    assert sorted(read_jsonl(tmp_path / "b" / "color"), key=lambda r: r["_id"]) == sorted(
        rows, key=lambda r: r["_id"]
    )


@pytest.mark.timeout(90)  # 1-22 s measured on a busy 2-core machine
def test_a_failure_that_stays_is_not_sent_again(tmp_path: Path) -> None:
    truncated = step(sampling=SamplingParams(max_tokens=3), max_reasks=1, on_failure="stay")
    first = Chain("colors", [truncated]).run([Question(text="Name a color.")], tmp_path / "a")
    [failure] = list(first.failures())
    assert failure["error_type"] == "invalid_output" and first.metadata["cache"]["sent"] == 2
    again = Chain("colors", [truncated]).run([Question(text="Name a color.")], tmp_path / "b")
    [kept] = list(again.failures())
    assert again.metadata["cache"]["sent"] == 0 and kept["message"] == failure["message"]
    assert kept["details"] == {"from_ledger": True}
