"""Calc: GoTaglio's ``calc`` sample ported: arithmetic questions with numeric answers, two
prompt styles compared. Runs on the CPU (the embedded engine) in a minute or so.

    chainette experiment run examples/calc.py:calc -c prompt=zero_shot -o runs/calc-zero
    chainette experiment run examples/calc.py:calc -c prompt=few_shot -o runs/calc-few
    chainette runs compare runs/calc-zero runs/calc-few
    chainette report runs/calc-few --compare runs/calc-zero -o report.html

GoTaglio's stages map onto the experiment: *prepare* is the step's templates (the prompt style
is a config field, so ``-c prompt=...`` picks it), *infer* is the step's engine call, *extract*
is its output model (``Answer``: the engine is held to JSON with a number in ``answer``), and
*assess* is ``numeric("answer")``: a case passes when the number equals the expected one
(score 1, else 0; how far off it was is the assessment's ``metric``). The suite,
``examples/calc.jsonl``, holds small sums, differences and products, so the bundled
SmolLM2-135M model gets some right and some wrong: what changes between two prompt styles is
what the comparison shows.

The engine is the embedded llama.cpp back-end with its bundled model; tests register a fake
engine under the same name, ``local``, for the fast checks.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from chainette import Chain, Experiment, SamplingParams, Step, numeric, register_engine

ENGINE = "local"
register_engine(ENGINE, backend="llama_cpp", n_ctx=1024)

SUITE = Path(__file__).with_name("calc.jsonl")

FEW_SHOT = [("1 + 1", 2), ("9 - 4", 5), ("3 * 4", 12)]
"""Worked examples the few-shot prompt shows (none of them is in the suite)."""


class Problem(BaseModel):
    question: str


class Answer(BaseModel):
    answer: float = Field(description="The numeric result")


class Sampling(BaseModel):
    temperature: float = 0.0
    max_tokens: int = Field(24, ge=8)


class CalcConfig(BaseModel):
    """What ``-c`` can set: ``chainette experiment config examples/calc.py:calc`` lists it."""

    prompt: Literal["zero_shot", "few_shot"] = "zero_shot"
    """``zero_shot``: the question only; ``few_shot``: three worked examples first."""
    engine: str = ENGINE
    sampling: Sampling = Sampling()


def system_prompt(style: str) -> str:
    base = "You are a calculator. Reply with the numeric result of the arithmetic question."
    if style == "zero_shot":
        return base
    shots = "\n".join(f'Question: What is {q}?\nReply: {{"answer": {a}}}' for q, a in FEW_SHOT)
    return f"{base}\nExamples:\n{shots}"


def build_chain(config: CalcConfig) -> Chain:
    solve = Step(
        id="solve",
        input_model=Problem,
        output_model=Answer,
        engine_name=config.engine,
        sampling=SamplingParams(
            temperature=config.sampling.temperature, max_tokens=config.sampling.max_tokens
        ),
        system_prompt=system_prompt(config.prompt),
        user_prompt="Question: {{ question }}",
    )
    return Chain(name="calc", steps=[solve], batch_size=4)


calc = Experiment("calc", build_chain, SUITE, [numeric("answer")], CalcConfig)
