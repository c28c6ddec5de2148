"""A tiny experiment on the real embedded engine: three sums, the numeric assessor, an LLM judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from tests.experiments.shared import CalcConfig, build_chain

from chainette import Experiment, SamplingParams, Step, llm_judge, numeric, register_engine

pytestmark = pytest.mark.llama


class Verdict(BaseModel):
    passed: bool
    reason: str = Field(max_length=60)


class JudgeInput(BaseModel):
    case: dict[str, Any]
    expected: Any
    output: dict[str, Any]


@pytest.mark.timeout(300)
def test_a_calc_experiment_runs_on_the_embedded_engine(tmp_path: Path) -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024)
    judge = Step(
        id="judge", input_model=JudgeInput, output_model=Verdict, engine_name="local",
        sampling=SamplingParams(temperature=0, max_tokens=48),
        system_prompt="You check arithmetic answers.",
        user_prompt="Question: {{ case.question }}. Expected: {{ expected.answer }}. "
        "Given: {{ output.answer }}. Is the given answer equal to the expected one?",
    )  # fmt: skip
    cases = [
        {"id": "one", "input": {"question": "1 + 1"}, "expected": {"answer": 2}},
        {"id": "two", "input": {"question": "2 + 3"}, "expected": {"answer": 5}},
        {"id": "three", "input": {"question": "3 * 3"}, "expected": {"answer": 9}},
    ]
    experiment = Experiment(
        "calc", build_chain, cases, [numeric("answer", tolerance=0.5), llm_judge(judge)], CalcConfig
    )
    result = experiment.run(
        tmp_path / "run", ["engine=local", "sampling.temperature=0", "sampling.max_tokens=24"]
    )
    # a 135M model gets sums wrong as often as right: what is checked is that every case was
    # answered, scored by the numeric assessor and judged, none an error
    assert [c.status for c in result.cases] != [] and all(c.status in ("pass", "fail") for c in result.cases)
    for case in result.cases:
        assert isinstance(case.output["answer"], float)
        assert case.assessments["numeric(answer)"].score is not None
        assert case.assessments["judge(judge)"].passed in (True, False)
    data = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert data["totals"]["tokens"]["completion"] > 0 and data["config"]["engine"] == "local"
    judged = json.loads((tmp_path / "run" / "experiment" / "judge-judge" / "metadata.json").read_text())
    assert judged["counts"]["records_out"] == 3 and judged["tokens"]["completion"] > 0
