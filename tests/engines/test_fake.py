"""The shipped fake engine answers with schema-valid JSON, deterministically."""

from __future__ import annotations

import json
import random
from enum import StrEnum
from typing import Annotated, Literal

import anyio
import pytest
from pydantic import BaseModel, Field, TypeAdapter

from chainette import ChatRequest, FakeEngine
from chainette.engines.fake import example_for_schema


class Color(StrEnum):
    red = "red"
    blue = "blue"


class Inner(BaseModel):
    label: str = Field(min_length=3, max_length=5)
    score: float = Field(gt=0, lt=1)


class Outer(BaseModel):
    name: str
    count: int = Field(ge=10, le=12)
    color: Color
    kind: Literal["a", "b"]
    tags: list[str] = Field(min_length=2, max_length=3)
    inner: Inner
    maybe: Inner | None = None
    flag: bool


@pytest.mark.parametrize("seed", range(25))
def test_examples_validate(seed: int) -> None:
    value = example_for_schema(Outer.model_json_schema(), random.Random(seed))
    Outer.model_validate(value)


def test_answers_are_deterministic_and_counted() -> None:
    engine = FakeEngine()
    request = ChatRequest(
        messages=({"role": "user", "content": "hi"},), json_schema=Inner.model_json_schema()
    )

    async def main() -> tuple[str, str]:
        first, second = await engine.generate([request, request])
        return first.text, second.text

    a, b = anyio.run(main)
    assert a == b and engine.calls == 2
    Inner.model_validate(json.loads(a))


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


@pytest.mark.parametrize(
    "union", [Cat | Dog, Annotated[Cat | Dog, Field(discriminator="kind")]], ids=["anyOf", "oneOf"]
)
def test_examples_of_a_union_validate_and_cover_every_variant(union: object) -> None:
    adapter = TypeAdapter(union)
    schema = adapter.json_schema()
    values = [adapter.validate_python(example_for_schema(schema, random.Random(seed))) for seed in range(20)]
    assert {type(v) for v in values} == {Cat, Dog}
