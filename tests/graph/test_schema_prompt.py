"""The default schema instruction lists fields, types, limits and descriptions."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter
from tests.helpers import Question

from chainette import Step
from chainette.graph.schema_prompt import schema_instruction


class Mood(StrEnum):
    happy = "happy"
    sad = "sad"


class Flat(BaseModel):
    answer: str = Field(max_length=100, description="A short answer")
    confidence: float = Field(ge=0, le=1)
    mood: Mood
    tags: list[str] = []


class Nested(BaseModel):
    inner: Flat


def test_flat_models_get_a_readable_field_list() -> None:
    text = schema_instruction(Flat.model_json_schema())
    assert text.splitlines() == [
        "Reply with only a JSON object with these fields:",
        "- answer (string, at most 100 characters): A short answer",
        "- confidence (number, >= 0, <= 1)",
        '- mood (one of "happy", "sad")',
        "- tags (list of string, optional)",
    ]


def test_nested_models_also_get_the_json_schema() -> None:
    text = schema_instruction(Nested.model_json_schema())
    assert "- inner (object)" in text and 'JSON schema: {"$defs"' in text


def test_step_instruction_can_be_replaced_or_disabled() -> None:
    def step(**kw: object) -> Step:
        return Step(id="s", input_model=Question, output_model=Flat, engine_name="e", user_prompt="x", **kw)

    assert step().schema_instruction.startswith("Reply with only a JSON object")
    assert step(output_format_instruction="").schema_instruction == ""
    assert step(output_format_instruction="Schema: {schema}").schema_instruction.startswith(
        'Schema: {"$defs"'
    )


class Refund(BaseModel):
    kind: Literal["refund"]
    amount: float = Field(gt=0, description="In euros")


class Question_(BaseModel):
    kind: Literal["question"]
    text: str


class Deep(BaseModel):
    kind: Literal["deep"]
    inner: Flat


def test_a_union_lists_each_variant_with_its_fields() -> None:
    schema = TypeAdapter(Annotated[Refund | Question_, Field(discriminator="kind")]).json_schema()
    assert schema_instruction(schema).splitlines() == [
        "Reply with only a JSON object of one of these kinds:",
        "Refund:",
        '  - kind (always "refund")',
        "  - amount (number, > 0): In euros",
        "Question_:",
        '  - kind (always "question")',
        "  - text (string)",
    ]
    nested = schema_instruction(TypeAdapter(Refund | Deep).json_schema())
    assert "  - inner (object)" in nested and 'JSON schema: {"$defs"' in nested
