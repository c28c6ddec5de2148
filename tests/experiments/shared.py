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
