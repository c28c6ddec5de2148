"""A Parquet input through the real embedded engine: rows in, schema-valid answers out, a bad row
in failures at its place, and a rerun answered from the ledger with the same ids."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, Field
from tests.helpers import Question

from chainette import Chain, SamplingParams, Step, register_engine

pytestmark = pytest.mark.llama


class Color(BaseModel):
    color: str = Field(max_length=20)


@pytest.mark.timeout(180)  # a few seconds alone; far longer while the 2-core machine is busy
def test_a_parquet_file_through_the_embedded_engine(tmp_path: Path) -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024, n_threads=2)
    src = tmp_path / "questions.parquet"
    pq.write_table(
        pa.table({"question": ["Name a color.", None, "What color is the sky?"], "id": [1, 2, 3]}), src
    )
    step = Step(
        id="color",
        input_model=Question,
        output_model=Color,
        engine_name="local",
        user_prompt="{{ text }}",
        sampling=SamplingParams(max_tokens=24),
    )
    chain = Chain("colors", [step])
    first = chain.run(src, tmp_path / "a", columns={"text": "question"})
    rows = list(first.flattened())
    assert [r["_index"] for r in rows] == [0, 2] and all(r["color.color"] for r in rows)
    assert [r["input.text"] for r in rows] == ["Name a color.", "What color is the sky?"]
    [failure] = first.failures()
    assert failure["message"].startswith("questions.parquet row 1: does not fit") and failure["_index"] == 1
    again = chain.run(src, tmp_path / "b", columns={"text": "question"})
    assert again.metadata["cache"]["sent"] == 0 and again.metadata["cache"]["hits"] == 2
    assert list(again.flattened()) == rows  # same ids, same answers
