"""Batched decoding on the embedded engine, for real: SmolLM2-135M, several sequences per llama.cpp decode."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest
from pydantic import BaseModel, Field
from tests.helpers import decoding, seconds_until_freed, with_llama_engine

from chainette.engines.base import ChatRequest, Completion, SamplingParams
from chainette.engines.llama_cpp import LlamaCppEngine

pytestmark = pytest.mark.llama

T = TypeVar("T")

QUESTIONS = [
    "What is the capital of France?",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
    "Who wrote Romeo and Juliet?",
    "Which planet is known as the red planet?",
    "What gas do plants absorb from the air?",
    "Name a large animal.",
    "What is the main ingredient of guacamole?",
    "Which language is spoken in Brazil?",
    "What is the square root of 81?",
]


class Answer(BaseModel):
    answer: str = Field(max_length=60)
    confidence: float


class Bounded(BaseModel):
    """Fields the model is pushed to get wrong: GBNF lets any number through, llguidance must not."""

    year: int = Field(ge=1990, le=1995)
    score: float = Field(gt=0, lt=1)
    code: str = Field(pattern=r"^[A-Z]{2}-\d{3}$")
    tags: list[str] = Field(min_length=2, max_length=3)


def ask(text: str, schema: dict[str, Any] | None = None, max_tokens: int = 48) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}),
        json_schema=schema,
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
    )


def with_engine(body: Callable[[LlamaCppEngine], Awaitable[T]], **options: Any) -> T:
    result: T = with_llama_engine(body, **options)
    return result


async def all_at_once(engine: LlamaCppEngine, requests: list[ChatRequest]) -> list[Completion]:
    """Every request in flight together, as the step runner sends them."""
    out: list[Completion | None] = [None] * len(requests)

    async def one(i: int) -> None:
        out[i] = (await engine.generate([requests[i]]))[0]

    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    return [c for c in out if c is not None]


def answers(completions: list[Completion]) -> list[tuple[str, str, int]]:
    return [(c.text, c.finish_reason, c.completion_tokens) for c in completions]


@pytest.mark.timeout(300)
def test_batched_greedy_outputs_are_identical_to_one_at_a_time() -> None:
    """Same answers, token for token, batched and one at a time (schema-bound and free). Breaks on
    a decoder that mixes sequences up (one shared KV cache made 1 of 8 answers differ here) or
    feeds prompts in chunks that llama.cpp computes with other rounding (see the next test)."""
    requests = [ask(q, Answer.model_json_schema()) for q in QUESTIONS] + [ask(q) for q in QUESTIONS[:4]]

    async def batched(engine: LlamaCppEngine) -> tuple[list[Completion], int]:
        completions = await all_at_once(engine, requests)
        return completions, engine._decoders[0].decodes

    alone = with_engine(lambda engine: all_at_once(engine, requests), parallel=1)
    together, decodes = with_engine(batched, parallel=8)
    assert answers(together) == answers(alone)
    finished = [c for c in together[: len(QUESTIONS)] if c.finish_reason == "stop"]
    assert len(finished) >= len(QUESTIONS) // 2
    for c in finished:
        Answer.model_validate_json(c.text)
    # really batched: far fewer decodes than tokens (one-at-a-time needs one per token)
    assert decodes < sum(c.completion_tokens for c in together) / 3


LONG_SYSTEM = (
    "Answer the question briefly.\n\nReply with only a JSON object with these fields:\n"
    "- answer (string, at most 60 characters)\n"
    "- confidence (number between 0 and 1: how sure you are)\n"
    "Do not explain the answer, do not repeat the question and do not add any other text."
)
"""A system prompt longer than one prompt chunk (``llama_batch.PROMPT_CHUNK``)."""


def ask_long(text: str) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": text}),
        json_schema=Answer.model_json_schema(),
        sampling=SamplingParams(temperature=0, max_tokens=48),
    )


async def one_by_one(engine: LlamaCppEngine, requests: list[ChatRequest]) -> list[Completion]:
    return [(await engine.generate([request]))[0] for request in requests]


@pytest.mark.timeout(300)
def test_answers_do_not_depend_on_what_was_cached_or_decoded_alongside() -> None:
    """The same answer, token for token, whether the long system prompt was evaluated with the
    question (cold), taken from the cache of the request before (warm, parallel=1), or copied
    from another sequence and decoded beside seven others (parallel=8). It breaks when a prompt
    is fed in chunks of 64 tokens or more: llama.cpp's tiled attention rounds differently."""
    questions = QUESTIONS[:8]
    requests = [ask_long(q) for q in questions]
    filler = ask("Say hello.")

    async def cold(engine: LlamaCppEngine) -> list[Completion]:
        # the filler's prompt replaces the cached one (and no prompt is kept beside it): each
        # request is evaluated from its start
        return [(await one_by_one(engine, [filler, request]))[1] for request in requests]

    async def together(engine: LlamaCppEngine) -> tuple[list[Completion], int]:
        return await all_at_once(engine, requests), engine._decoders[0].prefix_copies

    first = with_engine(cold, parallel=1, prompt_cache=False)
    warm = with_engine(lambda engine: one_by_one(engine, requests), parallel=1)
    batched, copies = with_engine(together, parallel=8)
    assert copies >= 1  # the batch copied the cached system prompt instead of evaluating it again
    assert answers(warm) == answers(first)
    assert answers(batched) == answers(first)


FRUITS = ["apple", "banana", "cherry", "damson", "elderberry", "fig", "grape", "huckleberry"]
LONG_LIST = "\n".join(f"{i}. {FRUITS[i % len(FRUITS)]} crate number {i * 7}" for i in range(1, 41))
"""A prompt of some 400 tokens: past 256 cached cells (``llama_batch.SPLIT_KV_CELLS``)."""


@pytest.mark.timeout(300)
def test_a_long_request_alone_is_computed_as_beside_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit-identical logits at every token for a request past 256 cached cells, alone and with a
    twin decoded beside it. Breaks without the throw-away token (``SPLIT_KV_CELLS``): llama.cpp
    computes a pass of one token of one long sequence with another attention kernel."""
    from chainette.engines import llama_guidance

    request = ChatRequest(
        messages=(
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"{LONG_LIST}\n\nWhich fruit is in crate number 70?"},
        ),
        sampling=SamplingParams(temperature=0, max_tokens=8),
    )
    seen: dict[int, list[Any]] = {}
    choose = llama_guidance.TokenChooser.choose

    def recording(self: llama_guidance.TokenChooser, logits: Any) -> int:
        seen.setdefault(id(self), []).append(logits.copy())
        return choose(self, logits)

    monkeypatch.setattr(llama_guidance.TokenChooser, "choose", recording)

    async def run(engine: LlamaCppEngine, n: int) -> tuple[list[Completion], int]:
        completions = await all_at_once(engine, [request] * n)
        return completions, engine._decoders[0].throwaways

    alone, throwaways = with_engine(lambda engine: run(engine, 1), parallel=1)
    alone_logits = next(iter(seen.values()))
    seen.clear()
    twins, _ = with_engine(lambda engine: run(engine, 2), parallel=2)
    first_logits = next(iter(seen.values()))  # the twin admitted first: never alone in a pass
    assert alone[0].completion_tokens == 8 and answers(twins) == answers(alone) * 2
    assert len(first_logits) == len(alone_logits)
    for step, (a, b) in enumerate(zip(alone_logits, first_logits, strict=True)):
        assert (a == b).all(), f"token {step}: logits differ by up to {abs(a - b).max()}"
    assert throwaways >= len(alone_logits) - 1  # every token past the prompt was a lone pass


@pytest.mark.timeout(300)
def test_bounds_and_patterns_are_never_violated() -> None:
    prompts = [
        "In which year did the Second World War end? Give the year.",
        "Give a score of 7 out of 10 and the year 2023.",
        "What year is it now? Answer with code abc and one tag.",
        "The year 1066, score 42, code 'hello world'.",
        "Pick the year 1999 and the score -5.",
        "Write the year 1800 and the code 12345.",
    ]
    requests = [ask(p, Bounded.model_json_schema(), max_tokens=96) for p in prompts]
    code = re.compile(r"^[A-Z]{2}-\d{3}$")

    def violations(completions: list[Completion]) -> list[str]:
        bad = []
        for c in completions:
            value = json.loads(c.text, strict=False) if c.finish_reason == "stop" else None
            if value is None:
                bad.append(f"not finished: {c.text!r}")
                continue
            if (
                not 1990 <= value["year"] <= 1995
                or not 0 < value["score"] < 1
                or not code.match(value["code"])
                or not 2 <= len(value["tags"]) <= 3
            ):
                bad.append(c.text)
        return bad

    guided = with_engine(lambda engine: all_at_once(engine, requests), parallel=6)
    assert violations(guided) == []
    for c in guided:
        Bounded.model_validate_json(c.text)
    # llama-cpp-python's GBNF lets the same prompts break the numeric bounds: the check has teeth
    # (without the pattern, which its converter cannot read)
    schema = Bounded.model_json_schema()
    del schema["properties"]["code"]["pattern"]
    unbounded = [ask(p, schema, max_tokens=96) for p in prompts]
    gbnf = with_engine(lambda engine: all_at_once(engine, unbounded), grammar="gbnf")
    assert any(not 1990 <= json.loads(c.text)["year"] <= 1995 for c in gbnf if c.finish_reason == "stop")


@pytest.mark.timeout(300)
def test_a_request_cut_at_max_tokens_does_not_disturb_its_neighbours() -> None:
    schema = Answer.model_json_schema()
    neighbours = [ask(q, schema) for q in QUESTIONS[:5]]
    cut = ask("Describe the history of Rome in detail.", schema, max_tokens=6)

    alone = with_engine(lambda engine: all_at_once(engine, neighbours), parallel=1)
    mixed = with_engine(
        lambda engine: all_at_once(engine, [*neighbours[:2], cut, *neighbours[2:]]), parallel=6
    )
    assert mixed[2].finish_reason == "length" and mixed[2].completion_tokens == 6
    assert answers([*mixed[:2], *mixed[3:]]) == answers(alone)


@pytest.mark.timeout(300)
def test_cancelling_a_batch_member_frees_its_sequence() -> None:
    long_schema = {
        "type": "object",
        "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 200}},
        "required": ["numbers"],
    }
    doomed = ask("List 200 numbers.", long_schema, max_tokens=900)
    others = [ask(q, Answer.model_json_schema()) for q in QUESTIONS[:3]]

    async def body(engine: LlamaCppEngine) -> tuple[int, float, list[Completion], list[Completion]]:
        decoder = engine._decoders[0]
        expected = await all_at_once(engine, others)
        results: list[Completion] = []
        scope = anyio.CancelScope()

        async def run_doomed() -> None:
            with scope:
                await engine.generate([doomed])

        async def run_others() -> None:
            await anyio.sleep(0.3)
            results.extend(await all_at_once(engine, others))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_doomed)
            tg.start_soon(run_others)
            await anyio.sleep(1.0)
            seq, tokens = decoding(decoder, doomed)
            scope.cancel()
            freed_after = await seconds_until_freed(decoder, seq, tokens)
        return len(tokens), freed_after, results, expected

    cells_before, freed_after, results, expected = with_engine(body, parallel=4)
    assert cells_before > 20  # it was decoding: prompt and numbers in its cache
    assert freed_after < 1.0  # at the loop's next turn, not after 900 tokens
    assert answers(results) == answers(expected)  # its neighbours were not disturbed


@pytest.mark.timeout(300)
def test_two_instances_share_the_requests() -> None:
    requests = [ask(q, Answer.model_json_schema()) for q in QUESTIONS[:6]]

    async def body(engine: LlamaCppEngine) -> tuple[list[Completion], list[int]]:
        completions = await all_at_once(engine, requests)
        return completions, [decoder.decodes for decoder in engine._decoders]

    completions, decodes = with_engine(body, instances=2, parallel=2, n_threads=1)
    assert len(decodes) == 2 and all(d > 0 for d in decodes)  # the least busy decoder took work
    assert all(c.finish_reason in ("stop", "length") for c in completions)
    assert any(c.finish_reason == "stop" for c in completions)


@pytest.mark.timeout(300)
def test_a_shared_prompt_start_is_evaluated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight requests with a system prompt longer than one prompt chunk: its tokens are evaluated
    once and copied whole to the other sequences, not copied a chunk short and the rest evaluated
    again by each of them (issue 26: 6 tokens per request on the benchmark's prompts)."""
    import llama_cpp

    fed: list[int] = []
    decode = llama_cpp.llama_decode

    def counting(ctx: Any, batch: Any) -> int:
        fed.append(int(batch.n_tokens))
        return int(decode(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", counting)
    requests = [ask_long(q) for q in QUESTIONS[:8]]

    async def together(engine: LlamaCppEngine) -> tuple[list[Completion], list[list[int]]]:
        prompter = engine._decoders[0].prompter
        return await all_at_once(engine, requests), [prompter(r.messages).tokens for r in requests]

    completions, prompts = with_engine(together, parallel=8)
    shared = 0
    while all(len(p) > shared and p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    assert shared > 63  # longer than one prompt chunk (llama_passes.PROMPT_CHUNK)
    # the shared start once, each prompt's own rest, then at most one decode per answer token
    most = shared + sum(len(p) - shared for p in prompts) + sum(c.completion_tokens for c in completions)
    assert sum(fed) <= most, f"{sum(fed)} tokens decoded, at most {most} needed"
