"""Fast-forward on the embedded engine: tokens the schema forces enter a decode together, for real (SmolLM2-135M)."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field
from tests.engines.test_llama_batch import QUESTIONS, Answer, all_at_once, answers, with_engine

from chainette import SamplingParams, Step
from chainette.engines.base import ChatRequest, Completion
from chainette.engines.llama_cpp import LlamaCppEngine
from chainette.engines.llama_passes import PROMPT_CHUNK, lone_pass, plan

pytestmark = pytest.mark.llama


class Place(BaseModel):
    city: str = Field(max_length=30)
    country: str = Field(max_length=30)


class Facts(BaseModel):
    """Nested object, enums and a list: much of the text is the schema's."""

    answer: str = Field(max_length=40)
    kind: Literal["person", "place", "thing", "number", "other"]
    where: Place
    tags: list[Literal["science", "geography", "history", "culture", "other"]] = Field(
        min_length=1, max_length=2
    )


def test_plan_never_leaves_one_token_alone_in_a_pass() -> None:
    """llama.cpp's passes over the planned counts: none is one token of one sequence (the split-KV
    kernel, other rounding), none holds 64 tokens of a sequence (the tiled kernel)."""
    cases = [
        ([0, 1], [3, 2]),
        ([0, 1, 2], [1, 7, 6]),
        ([0, 1, 2, 3], [5, 1, 4, 2]),
        ([0, 1, 2], [200, 2, 90]),
        ([0, 2], [1, 1]),  # not consecutive: two passes of one token, nothing to take away
    ]
    for seqs, waiting in cases:
        counts = plan(seqs, waiting, 2048)
        assert all(1 <= c <= min(w, PROMPT_CHUNK) for c, w in zip(counts, waiting, strict=True))
        assert lone_pass(seqs, counts) is None or all(c == 1 for c in counts), (waiting, counts)
    assert plan([0, 1], [3, 2], 2048) == [2, 2]
    assert plan([0], [1], 2048) == [1]  # a decode of one token: the throw-away token's case
    assert sum(plan(list(range(4)), [63, 63, 63, 1], 64)) <= 64  # the batch's budget


def ask_for(output_model: type[BaseModel], text: str, max_tokens: int = 96) -> ChatRequest:
    """What a chain step sends: the system prompt carries the schema instruction, as in a real run.
    (Without it the model writes a key's ``":`` as two tokens, where llguidance's canonical
    tokenization of the forced text has one: see docs/decisions.md.)"""
    step = Step(
        id="s", input_model=Place, output_model=output_model, engine_name="e", user_prompt="{{ city }}"
    )
    return ChatRequest(
        messages=(
            {"role": "system", "content": f"Answer briefly.\n\n{step.schema_instruction}"},
            {"role": "user", "content": text},
        ),
        json_schema=step.json_schema,
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
    )


def _run(requests: list[Any], **options: Any) -> tuple[list[Completion], dict[str, int]]:
    async def body(engine: LlamaCppEngine) -> tuple[list[Completion], dict[str, int]]:
        return await all_at_once(engine, requests), engine.counters()

    result: tuple[list[Completion], dict[str, int]] = with_engine(body, **options)
    return result


@pytest.mark.timeout(300)
def test_forced_tokens_skip_decodes_and_keep_the_answers() -> None:
    """Same answers with fast-forward on and off (one sequence), fewer decodes with it on: every
    decode with fast-forward ends in a choice, and a grammar that ends on forced tokens stops
    without another decode. Breaks if the forced tokens were tokenized unlike the model's own
    greedy choice (the answers drift) or fed one decode each (no decode saved)."""
    requests = [ask_for(Facts, q) for q in QUESTIONS[:4]] + [ask_for(Answer, q) for q in QUESTIONS[4:6]]
    on, counted = _run(requests, parallel=1)
    off, plain = _run(requests, parallel=1, fast_forward=False)
    same = sum(a == b for a, b in zip(answers(on), answers(off), strict=True))
    assert same >= len(requests) - 1, [c.text for c in on + off]
    assert plain["forced_tokens"] == 0 and counted["forced_tokens"] > 0
    assert counted["generated_tokens"] == sum(c.completion_tokens for c in on)
    # a forced token costs no decode of its own (a prompt may take one more chunk with the
    # forced start of its answer appended)
    assert counted["decodes"] <= plain["decodes"] - counted["forced_tokens"] + len(requests)
    for c in on:
        if c.finish_reason == "stop":
            Facts.model_validate_json(c.text) if "where" in c.text else Answer.model_validate_json(c.text)


@pytest.mark.timeout(300)
def test_forced_runs_batched_answer_as_one_at_a_time() -> None:
    """Forced runs of several sequences, and prompts admitted beside them (parallel 3 for 6
    requests), decode to the same tokens as one at a time: a forced run is fed like a prompt chunk."""
    requests = [ask_for(Facts, q) for q in QUESTIONS[:6]]
    alone, _ = _run(requests, parallel=1)
    together, counted = _run(requests, parallel=3)
    assert answers(together) == answers(alone)
    assert counted["forced_tokens"] > 0
    finished = [json.loads(c.text, strict=False) for c in together if c.finish_reason == "stop"]
    assert finished and all(1 <= len(f["tags"]) <= 2 for f in finished)
