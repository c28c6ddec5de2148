"""Control flow on the real embedded engine: a router sends records to LLM steps, branches nest,
and a Python node after the join reads the record; every record ends in flattened/ or failures.
A union step decodes under the union's grammar and a router follows the variant it answered."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

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


@pytest.mark.timeout(120)
def test_one_chain_used_twice_as_subflows_on_llama_cpp(tmp_path: Path) -> None:
    """A two-step chain (its second step reads its own first step and its own input) used twice
    on the real engine: each use writes its folders, only its final output is visible after it."""
    second = Step(
        id="again",
        input_model=Color,
        output_model=Color,
        engine_name="local",
        sampling=SamplingParams(temperature=0, max_tokens=24),
        user_prompt="{{ input.text }} You said {{ first.color }}. Say it once more.",
    )
    colors = Chain("colors", [ask("first", "{{ text }} Name a color."), second])

    def next_question(c: Color, record: RecordView) -> Question:
        return Question(text=f"Not {record['warm'].color}.")

    chain = Chain("flow", [colors.as_node("warm"), apply(next_question), colors.as_node("cool")])
    questions = [Question(text="Fire is hot."), Question(text="Ice is cold.")]
    result = chain.run(questions, output_dir=tmp_path / "run")
    assert result.counts == {"records_in": 2, "records_out": 2, "failures": 0, "filtered": 0}
    rows = list(result.flattened())
    assert all(r["warm.color"] and r["cool.color"] for r in rows)
    assert [r["next_question.text"] for r in rows] == [f"Not {r['warm.color']}." for r in rows]
    for use in ("warm", "cool"):
        for step in ("first", "again"):
            assert result.metadata["nodes"][f"{use}.{step}"]["records_out"] == 2
            assert (tmp_path / "run" / f"{use}.{step}").is_dir()


class Cat(BaseModel):
    kind: Literal["cat"]
    name: str = Field(max_length=16)
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    name: str = Field(max_length=16)
    good: bool


class Routed(BaseModel):
    route: str
    name: str


@pytest.mark.timeout(180)  # 3 s measured; 75 s while the 2-core machine was busy compiling
def test_a_union_step_answers_a_variant_and_the_router_follows_it(tmp_path: Path) -> None:
    pet = Step(
        id="pet",
        input_model=Question,
        output_model=Annotated[Cat | Dog, Field(discriminator="kind")],
        engine_name="local",
        sampling=SamplingParams(temperature=0, max_tokens=48),
        system_prompt="Describe the pet as a cat or a dog.",
        user_prompt="{{ text }}",
    )

    def cat_route(c: Cat) -> Routed:
        return Routed(route="cat", name=c.name)

    def dog_route(d: Dog) -> Routed:
        return Routed(route="dog", name=d.name)

    chain = Chain("pets", [pet, Router("by_kind", {Cat: apply(cat_route), Dog: apply(dog_route)})])
    assert chain.check().errors == []
    inputs = [Question(text="A cat called Tom."), Question(text="A dog called Rex."), Question(text="Felix.")]
    result = chain.run(inputs, tmp_path / "run")
    rows = list(result.flattened())
    # the grammar holds the answer to one variant: every record validates, none is re-asked
    assert result.counts["failures"] == 0 and len(rows) == 3
    assert result.metadata["nodes"]["pet"]["reasks"] == 0
    for row in rows:  # whichever variant the model chose, the router followed it
        assert row["pet.kind"] in ("cat", "dog") and row["by_kind.route"] == row["pet.kind"]
        assert row["by_kind.name"] == row["pet.name"]
        variant = Cat if row["pet.kind"] == "cat" else Dog
        variant.model_validate({k.removeprefix("pet."): v for k, v in row.items() if k.startswith("pet.")})
