"""Control flow on the real embedded engine: a router sends records to LLM steps, branches nest,
and a Python node after the join reads the record; every record ends in flattened/ or failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from tests.helpers import Question

from chainette import Branch, Chain, RecordView, Router, SamplingParams, Step, apply, register_engine

pytestmark = pytest.mark.llama


class Color(BaseModel):
    color: str = Field(max_length=20)


class Report(BaseModel):
    question: str
    route: str
    color: str


@pytest.fixture(autouse=True)
def local_engine() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024)


def ask(id: str, prompt: str) -> Step:
    return Step(
        id=id,
        input_model=Question,
        output_model=Color,
        engine_name="local",
        sampling=SamplingParams(temperature=0, max_tokens=24),
        user_prompt=prompt,
    )


@pytest.mark.timeout(120)
def test_a_router_and_nested_branches_on_llama_cpp(tmp_path: Path) -> None:
    router = Router(
        "pick",
        {
            "sky": ask("sky", "{{ text }} What color is the sky?"),
            "grass": ask("grass", "{{ text }} Grass color?"),
        },
        by=lambda q: "sky" if "sky" in q.text else "grass",
    )

    def report(q: Question, record: RecordView) -> Report:  # after the group: the value it came in with
        picked = record["picked"]
        return Report(question=q.text, route="sky" if "sky" in record else "grass", color=picked.color)

    chain = Chain(
        "flow",
        [[Branch("outer", [[Branch("inner", [router]).join("picked")]]).join("done")], apply(report)],
    )
    inputs = [Question(text="About the sky."), Question(text="About grass."), Question(text="More sky.")]
    result = chain.run(inputs, tmp_path / "run")
    rows = list(result.flattened())
    assert result.counts["records_in"] == 3 and len(rows) + result.counts["failures"] == 3
    assert [r["report.route"] for r in rows] == [
        "sky" if "sky" in q.text else "grass"
        for q in inputs
        if q.text in {r["report.question"] for r in rows}
    ]
    assert all(r["report.color"] == r["pick.color"] for r in rows)
    assert result.metadata["cache"]["sent"] == 3
