"""Shared pieces of the experiment tests: a calc chain on a scripted fake engine (a plain module)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel

from chainette import Chain, Required, SamplingParams, Step
from chainette.engines.base import ChatRequest


class Problem(BaseModel):
    question: str


class Result(BaseModel):
    answer: float


class Sampling(BaseModel):
    temperature: float = 0.7
    max_tokens: int = 32


class CalcConfig(BaseModel):
    engine: Annotated[str, Required("engine name")]
    sampling: Sampling = Sampling()
    tags: list[str] = []


def calculator(request: ChatRequest) -> dict[str, Any]:
    """Answers ``a + b`` / ``a * b`` right, anything with 'wrong' off by one, 'boom' with an error."""
    text = request.messages[-1]["content"]
    if "boom" in text:
        raise RuntimeError("the engine exploded")
    a, op, b = re.search(r"(\d+)\s*([+*])\s*(\d+)", text).groups()  # type: ignore[union-attr]
    value = int(a) + int(b) if op == "+" else int(a) * int(b)
    return {"answer": value + (1 if "wrong" in text else 0)}


def build_chain(config: CalcConfig) -> Chain:
    step = Step(
        id="solve",
        input_model=Problem,
        output_model=Result,
        engine_name=config.engine,
        sampling=SamplingParams(
            temperature=config.sampling.temperature, max_tokens=config.sampling.max_tokens
        ),
        user_prompt="Compute {{ question }}",
    )
    return Chain(name="calc", steps=[step])


def write_jsonl(path: Any, rows: list[dict[str, Any]]) -> Any:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CALLS: list[str] = []
"""Every prompt the counting responders were sent (shared by every import of an experiment file)."""


def counting_calculator(request: ChatRequest) -> dict[str, Any]:
    """``calculator``, counting its calls in ``CALLS``."""
    CALLS.append(request.messages[-1]["content"])
    return calculator(request)


def sloppy_calculator(request: ChatRequest) -> dict[str, Any]:
    """``counting_calculator``, but every product is off by one (another "model")."""
    answer = counting_calculator(request)
    if "*" in request.messages[-1]["content"]:
        answer["answer"] += 1
    return answer


CASES = [
    {"id": "add", "input": {"question": "2 + 3"}, "expected": {"answer": 5}},
    {"id": "mul", "input": {"question": "2 * 3"}, "expected": {"answer": 6}},
    {"id": "off", "input": {"question": "wrong 1 + 1"}, "expected": {"answer": 2}},
    {"id": "boom", "input": {"question": "boom 1 + 1"}, "expected": {"answer": 2}},
]
"""Under ``calc``: add and mul pass, off fails, boom errors; under ``sloppy`` mul fails too."""
