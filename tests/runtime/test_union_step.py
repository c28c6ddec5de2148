"""A step whose output_model is a union of models: the answer validates into one variant, the
record goes on as that variant's instance, and a Router keyed by the variant classes routes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pytest
from pydantic import BaseModel, Field
from tests.helpers import Question, read_jsonl

from chainette import (
    Chain,
    ChainDefinitionError,
    ChatRequest,
    RecordView,
    Router,
    Step,
    apply,
    register_engine,
)


class Cat(BaseModel):
    kind: Literal["cat"]
    name: str
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    name: str
    good: bool


class Label(BaseModel):
    label: str


PetUnion = Annotated[Cat | Dog, Field(discriminator="kind")]
TypingUnion = Union[Cat, Dog]  # noqa: UP007 - the typing spelling is accepted too


def by_text(request: ChatRequest) -> Any:
    """A cat for 'cat…' questions, a dog for 'dog…', junk for 'junk…'."""
    text = request.messages[-1]["content"]
    if text.startswith("cat"):
        return {"kind": "cat", "name": text, "lives": 9}
    if text.startswith("dog"):
        return {"kind": "dog", "name": text, "good": True}
    return {"kind": "bird", "name": text}


def pet_step(output_model: Any = PetUnion, **options: Any) -> Step:
    return Step(
        id="pet",
        input_model=Question,
        output_model=output_model,
        engine_name="fake",
        user_prompt="{{ text }}",
        **options,
    )


def from_cat(c: Cat) -> Label:
    return Label(label=f"cat {c.name} ({c.lives} lives)")


def from_dog(d: Dog) -> Label:
    return Label(label=f"dog {d.name}" + (" (good)" if d.good else ""))


def route_by_variant() -> Router:
    return Router("by_kind", {Cat: apply(from_cat), Dog: apply(from_dog)})


@pytest.mark.parametrize(
    "annotation", [Cat | Dog, TypingUnion, PetUnion], ids=["pipe", "typing.Union", "discriminated"]
)
def test_each_record_takes_the_route_of_its_variant_in_input_order(annotation: Any, run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=by_text)
    texts = ["cat a", "dog b", "dog c", "cat d", "cat e", "dog f"]
    seen: dict[str, type[BaseModel]] = {}

    def look(value: Cat | Dog, record: RecordView) -> Cat | Dog:
        seen[record.input.text] = type(value)
        return value

    chain = Chain("pets", [pet_step(annotation), apply(look, output_model=None), route_by_variant()])
    assert chain.check().errors == []
    result = chain.run([Question(text=t) for t in texts], output_dir=run_dir, ordered=True)
    rows = list(result.flattened())
    assert [r["by_kind.label"] for r in rows] == [
        "cat cat a (9 lives)",
        "dog dog b (good)",
        "dog dog c (good)",
        "cat cat d (9 lives)",
        "cat cat e (9 lives)",
        "dog dog f (good)",
    ]
    assert [seen[t] for t in texts] == [
        Cat,
        Dog,
        Dog,
        Cat,
        Cat,
        Dog,
    ]  # the value after the step is the variant
    assert [r["pet.kind"] for r in rows] == ["cat", "dog", "dog", "cat", "cat", "dog"]
    assert result.counts == {"records_in": 6, "records_out": 6, "failures": 0, "filtered": 0}
    assert sorted(r["kind"] for r in read_jsonl(run_dir / "pet")) == ["cat"] * 3 + ["dog"] * 3


def test_graph_json_names_the_union_and_gives_its_schema(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=by_text)
    Chain("pets", [pet_step(), route_by_variant()]).run([Question(text="cat a")], output_dir=run_dir)
    graph = json.loads((run_dir / "graph.json").read_text())
    node = next(n for n in graph["nodes"] if n["id"] == "pet")
    here = __name__
    assert node["output_model"] == f"{here}.Cat | {here}.Dog"
    schema = node["output_schema"]
    assert [o["$ref"] for o in schema["oneOf"]] == ["#/$defs/Cat", "#/$defs/Dog"]
    assert schema["discriminator"]["propertyName"] == "kind"


def test_the_step_keeps_the_annotation_and_its_variants() -> None:
    step = pet_step()
    assert step.output_type is PetUnion and step.variants == (Cat, Dog) and step.output_model is None
    single = pet_step(Cat)
    assert single.output_type is Cat and single.variants == (Cat,) and single.output_model is Cat


def test_the_prompt_describes_every_variant() -> None:
    instruction = pet_step().schema_instruction
    assert instruction.startswith("Reply with only a JSON object of one of these kinds:")
    assert '- kind (always "cat")' in instruction and '- kind (always "dog")' in instruction
    assert "- lives (integer)" in instruction and "- good (boolean)" in instruction


def test_a_discriminator_with_a_default_is_still_required_in_the_schema() -> None:
    class Left(BaseModel):
        side: Literal["left"] = "left"

    class Right(BaseModel):
        side: Literal["right"] = "right"

    step = pet_step(Annotated[Left | Right, Field(discriminator="side")])
    defs = step.json_schema["$defs"]
    assert "side" in defs["Left"]["required"] and "side" in defs["Right"]["required"]


def test_an_answer_of_no_variant_fails_the_record_naming_the_step(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=by_text)
    chain = Chain("pets", [pet_step(Cat | Dog, max_reasks=1), route_by_variant()])
    result = chain.run([Question(text="cat a"), Question(text="junk"), Question(text="dog b")], run_dir)
    assert [r["by_kind.label"] for r in result.flattened()] == ["cat cat a (9 lives)", "dog dog b (good)"]
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["node"] == "pet" and failure["error_type"] == "invalid_output"
    assert failure["attempts"] == 2 and failure["_index"] == 1
    message = failure["message"]
    assert message.startswith("Step 'pet': output invalid") and "none of the variants Cat, Dog" in message
    assert "Cat.lives" in message and "Dog.good" in message  # pydantic's reasons, per variant


def test_a_bad_tag_names_the_expected_tags(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=by_text)
    result = Chain("pets", [pet_step(max_reasks=0)]).run([Question(text="junk")], run_dir)
    [failure] = list(result.failures())
    assert "none of the variants Cat, Dog" in failure["message"]
    assert "'cat', 'dog'" in failure["message"]


def test_the_fake_engine_answers_any_variant_and_a_rerun_comes_from_the_ledger(
    run_dir: Path, tmp_path: Path
) -> None:
    register_engine("fake", backend="fake")  # random-but-valid answers: each picks a variant
    chain = Chain("pets", [pet_step(), route_by_variant()])
    inputs = [Question(text=f"pet {i}") for i in range(12)]
    first = chain.run(inputs, output_dir=run_dir, ordered=True)
    rows = list(first.flattened())
    assert len(rows) == 12 and first.counts["failures"] == 0
    kinds = [r["pet.kind"] for r in rows]
    assert set(kinds) == {"cat", "dog"}
    assert all(r["by_kind.label"].startswith(k) for r, k in zip(rows, kinds, strict=True))
    again = chain.run(inputs, output_dir=tmp_path / "again", ordered=True)
    assert again.metadata["cache"]["sent"] == 0  # a union step's requests key fine
    assert [r["pet.kind"] for r in again.flattened()] == kinds


def test_a_union_with_a_member_that_is_not_a_model_is_refused() -> None:
    for bad in (Cat | str, Cat | None, list[Cat], "Cat"):
        with pytest.raises(ChainDefinitionError, match="Step 'pet': output_model must be a pydantic") as exc:
            pet_step(bad)
        assert "Cat | Dog" in str(exc.value)  # says what is allowed
