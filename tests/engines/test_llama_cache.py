"""Prompts kept across requests on the embedded engine (``llama_cache.PromptCache``), for real."""

from __future__ import annotations

from typing import Any

import pytest
from tests.engines.test_llama_batch import LONG_SYSTEM, QUESTIONS, Answer, answers, one_by_one, with_engine

from chainette.engines.base import ChatRequest, Completion, SamplingParams
from chainette.engines.llama_cpp import LlamaCppEngine

pytestmark = pytest.mark.llama

ROLES = ["a geography teacher", "a careful librarian", "a science journalist"]


def ask_as(role: str, question: str) -> ChatRequest:
    """A long system prompt per role (they differ from their fifth token on), then the question."""
    return ChatRequest(
        messages=(
            {"role": "system", "content": f"You are {role}. {LONG_SYSTEM}"},
            {"role": "user", "content": question},
        ),
        json_schema=Answer.model_json_schema(),
        sampling=SamplingParams(temperature=0, max_tokens=48),
    )


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.timeout(600)
def test_steps_taking_turns_evaluate_each_system_prompt_once() -> None:
    """Three steps' requests one at a time, taking turns (as records move on one by one through a
    chain): with the prompt cache each system prompt is evaluated once and copied after that;
    without it (and on main before it) the one sequence's cells always hold another step's prompt
    and every request evaluates its whole prompt. The answers are the same token for token."""
    requests = [ask_as(role, q) for q in QUESTIONS[:3] for role in ROLES]

    def run(prompt_cache: bool) -> tuple[list[Completion], dict[str, int], list[list[int]]]:
        async def body(engine: LlamaCppEngine) -> tuple[list[Completion], dict[str, int], list[list[int]]]:
            done = await one_by_one(engine, requests)
            prompter = engine._decoders[0].prompter
            return done, engine.counters(), [prompter(r.messages).tokens for r in requests]

        out: Any = with_engine(body, parallel=1, prompt_cache=prompt_cache)
        return out  # type: ignore[no-any-return]

    cached, with_cache, prompts = run(True)
    plain, without_cache, _ = run(False)
    assert answers(cached) == answers(plain)
    # what no earlier request's prompt started with: the least any reuse must evaluate
    needed = sum(
        len(p) - max((common_prefix(p, q) for q in prompts[:i]), default=0) for i, p in enumerate(prompts)
    )
    # the roles' prompts share their first tokens ("<|im_start|>system\nYou are"): too few to copy
    assert with_cache["prompt_tokens"] <= needed + 8 * len(requests), (with_cache, needed)
    assert with_cache["prompt_cache_hits"] == len(requests) - len(ROLES)
    assert without_cache["prompt_cache_hits"] == 0
    assert without_cache["prompt_tokens"] >= sum(len(p) for p in prompts) - 8 * len(requests)
    assert 2 * with_cache["prompt_tokens"] < without_cache["prompt_tokens"], (with_cache, without_cache)
