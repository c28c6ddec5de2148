"""Assessors get the chain's output as its typed model, with dict-style access kept (issue 28)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from chainette import Chain, Step, register_engine
from chainette.experiments import Case, Experiment, exact, function


class Question(BaseModel):
    text: str


class Measure(BaseModel):
    answer: int
    unit: str

    def in_mm(self) -> int:
        return self.answer * 10 if self.unit == "cm" else self.answer


def build(_: Any) -> Chain:
    register_engine("typed-out", backend="fake", responder=lambda request: {"answer": 5, "unit": "cm"})
    step = Step(
        id="measure",
        input_model=Question,
        output_model=Measure,
        engine_name="typed-out",
        user_prompt="{{ text }}",
    )
    return Chain(name="measure", steps=[step])


def test_an_assessor_gets_the_output_model_and_dict_access_still_works(tmp_path: Path) -> None:
    seen: list[Any] = []

    def typed(case: Case, out: Any) -> bool:
        seen.append(out)
        return isinstance(out, Measure) and out.in_mm() == 50 and out["unit"] == "cm" and out.get("x") is None

    experiment = Experiment(
        "measure",
        build,
        [Case("a", {"text": "how long?"}, expected={"answer": 5})],
        [function(typed), exact("answer")],
    )

    result = experiment.run(tmp_path / "run")

    assert [c.status for c in result.cases] == ["pass"], result.cases
    assert isinstance(seen[0], Measure) and seen[0] == Measure(answer=5, unit="cm")
    assert seen[0] == {"answer": 5, "unit": "cm"} and "answer" in seen[0] and dict(seen[0])["unit"] == "cm"
    assert result.cases[0].output == {"answer": 5, "unit": "cm"}  # what is stored stays JSON


def test_typed_output_leaves_what_does_not_validate_and_types_each_of_a_list() -> None:
    from chainette.experiments.assess import typed_output

    assert typed_output({"answer": "five"}, [Measure]) == {"answer": "five"}
    typed = typed_output([{"answer": 1, "unit": "mm"}, {"answer": 2, "unit": "mm"}], [Measure])
    assert [m.in_mm() for m in typed] == [1, 2]
    assert typed_output("text", [Measure]) == "text"
