"""A writer/critic loop on the real embedded engine (the writer's prompt takes the critic's
previous feedback): each pass is its own requests and rows, the value after the loop is the last
pass's, and a rerun sends nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from tests.helpers import Question, read_jsonl

from chainette import Chain, Loop, SamplingParams, Step, register_engine

pytestmark = pytest.mark.llama


class Draft(BaseModel):
    text: str = Field(max_length=60)


class Critique(BaseModel):
    feedback: str = Field(max_length=60)


@pytest.fixture(autouse=True)
def local_engine() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024)


@pytest.mark.timeout(240)
def test_a_writer_critic_loop_on_llama_cpp(tmp_path: Path) -> None:
    sampling = SamplingParams(temperature=0, max_tokens=40)
    writer = Step(
        id="writer",
        input_model=Question,
        output_model=Draft,
        engine_name="local",
        sampling=sampling,
        system_prompt="You write one short sentence.",
        user_prompt="Write a sentence about {{ input.text }}."
        "{% if critic is defined %} Improve it: {{ critic.feedback }}{% endif %}",
    )
    critic = Step(
        id="critic",
        input_model=Draft,
        output_model=Critique,
        engine_name="local",
        sampling=sampling,
        system_prompt="You give one short piece of advice.",
        user_prompt="How could this sentence be better? {{ text }}",
    )
    chain = Chain("refine", [Loop("refine", [writer, critic], times=2)])
    inputs = [Question(text="owls"), Question(text="rain")]
    result = chain.run(inputs, tmp_path / "run")
    rows = list(result.flattened())
    assert len(rows) + result.counts["failures"] == 2 and rows
    assert all((r["refine.iterations"], r["refine.stop_reason"]) == (2, "times") for r in rows)
    assert result.metadata["cache"]["sent"] >= 4 * len(rows)  # 2 passes x 2 steps (re-asks come on top)
    passes = sorted((r["_id"], r["refine.iteration"]) for r in read_jsonl(tmp_path / "run" / "writer"))
    assert passes == sorted((r["_id"], k) for r in rows for k in (0, 1))
    last_writer = {
        r["_id"]: r["text"] for r in read_jsonl(tmp_path / "run" / "writer") if r["refine.iteration"] == 1
    }
    assert all(r["writer.text"] == last_writer[r["_id"]] for r in rows)

    rerun = chain.run(inputs, tmp_path / "rerun")
    assert rerun.metadata["cache"]["sent"] == 0
    assert list(rerun.flattened()) == rows
