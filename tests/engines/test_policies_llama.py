"""A step's policy timeout on the real embedded llama.cpp engine: a long generation is cut (its
sequence leaves the decode loop), and the same engine answers the next request."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from tests.helpers import Answer, Question

from chainette import Chain, NodePolicy, SamplingParams, Step, register_engine

pytestmark = pytest.mark.llama


class Story(BaseModel):
    story: str = Field(min_length=1500, max_length=3000)


@pytest.mark.timeout(120)
def test_a_timed_out_generation_is_cut_and_the_engine_answers_the_next_request(run_dir: Path) -> None:
    register_engine("local", backend="llama_cpp", n_ctx=2048)
    long = Step(
        id="long",
        input_model=Question,
        output_model=Story,
        engine_name="local",
        user_prompt="Write a very long story about {{ text }}.",
        sampling=SamplingParams(temperature=0, max_tokens=700),
        max_reasks=0,
        on_failure="emit",  # the record goes on to the next step, on the same engine
        policy=NodePolicy(timeout_s=0.5),
    )
    short = Step(  # reads the chain's input: with emit, the value after 'long' stays its input
        id="qa",
        input_model=Story,
        output_model=Answer,
        engine_name="local",
        system_prompt="Answer the question briefly.",
        user_prompt="Question: {{ input.text }}",
        sampling=SamplingParams(temperature=0, max_tokens=48),
    )
    started = time.monotonic()
    result = Chain("cut", [long, short]).run(
        [Question(text="What is the capital of France?")], output_dir=run_dir, cache="off"
    )
    elapsed = time.monotonic() - started
    [failure] = list(result.failures())
    assert failure["node"] == "long" and failure["error_type"] == "engine_error"
    assert "timed out after 0.5 s" in failure["message"]
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["nodes"]["qa"]["requests"] == 1 and meta["nodes"]["qa"]["done"] == 1
    [row] = list(result.flattened())
    Answer.model_validate({"answer": row["qa.answer"], "confidence": row["qa.confidence"]})
    assert elapsed < 60, elapsed
