"""The service on the real embedded engine: concurrent traces decode together, a cancelled trace's
sequence is freed at the next token while the others finish, a repeat comes from the ledger."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic import BaseModel, Field
from tests.helpers import Question

from chainette import Chain, ChainService, Router, SamplingParams, Step, TraceCancelledError, register_engine
from chainette.runtime.partial import partial_json

pytestmark = [pytest.mark.llama, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Short(BaseModel):
    answer: str = Field(max_length=60)


class Numbers(BaseModel):
    numbers: list[int] = Field(min_length=200)


def chain(output: type[BaseModel], max_tokens: int, id: str = "qa") -> Chain:
    return Chain(
        name=f"served-{id}",
        steps=[
            Step(
                id=id,
                input_model=Question,
                output_model=output,
                engine_name="local",
                sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
                user_prompt="{{ text }}",
            )
        ],
    )


class Ask(BaseModel):
    text: str
    kind: str


def step(id: str, output: type[BaseModel], max_tokens: int) -> Step:
    return Step(
        id=id,
        input_model=Ask,
        output_model=output,
        engine_name="local",
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
        user_prompt="{{ text }}",
    )


@pytest.mark.timeout(300)
async def test_cancelling_a_decoding_trace_frees_its_sequence_and_spares_the_others() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024, parallel=4)
    routed = Chain(
        name="served",
        steps=[Router("r", {"qa": step("qa", Short, 48), "count": step("count", Numbers, 900)}, by="kind")],
    )
    questions = ["What is the capital of France?", "Who wrote Romeo and Juliet?"]
    async with ChainService(routed, cache="off") as service:
        alone = [await (await service.submit({"text": q, "kind": "qa"})).result() for q in questions]
        engine: Any = await service.engine("local")
        decoder = engine._decoders[0]
        doomed = await service.submit({"text": "List 200 numbers.", "kind": "count"}, trace_id="doomed")
        others = [await service.submit({"text": q, "kind": "qa"}) for q in questions]
        for _ in range(500):  # until it is decoding its numbers
            if any(
                s.job is not None and len(s.job.out) > 10 and "200" in s.job.request.messages[-1]["content"]
                for s in decoder.slots
            ):
                break
            await anyio.sleep(0.01)
        else:
            pytest.fail(
                f"the long trace never started decoding: {[(s.job.request.messages, len(s.job.out)) for s in decoder.slots if s.job]} {[e.kind async for e in doomed.events()] if doomed.done.is_set() else doomed._events}"
            )
        started = anyio.current_time()
        assert doomed.cancel()
        with pytest.raises(TraceCancelledError):
            await doomed.result()
        served = [await trace.result() for trace in others]
        while decoder.busy_sequences() and anyio.current_time() - started < 5:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        freed_after = anyio.current_time() - started
        assert decoder.busy_sequences() == 0
        assert freed_after < 1.5  # at the next token, not after 900
        assert served == alone  # greedy answers of the other traces are unchanged
        assert service.counts == {"output": 4, "cancelled": 1}


@pytest.mark.timeout(300)
async def test_a_repeated_submission_is_answered_from_the_ledger() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024, parallel=2)
    async with ChainService(chain(Short, 48)) as service:
        first = await (await service.submit({"text": "What colour is the sky?"})).result()
        stats = service._ctx.stats["qa"] if service._ctx else None
        assert stats is not None and stats.requests == 1
        second = await (await service.submit({"text": "What colour is the sky?"})).result()
        assert second == first and stats.requests == 1 and stats.cache_hits == 1


@pytest.mark.timeout(300)
async def test_tokens_stream_from_the_embedded_engine_as_chunk_events() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024, parallel=2)
    async with ChainService(chain(Short, 48), cache="off") as service:
        trace = await service.submit({"text": "Who wrote Romeo and Juliet?"})
        events = [e async for e in trace.events()]
        answer = await trace.result()
    chunks = [e.data for e in events if e.kind == "chunk"]
    assert len(chunks) > 2  # token by token, not the whole answer at the end
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))  # each the new text only
    assert Short.model_validate_json("".join(c["delta"] for c in chunks)) == answer
    # the object so far, as a client parses it from the deltas it has
    so_far = ["".join(c["delta"] for c in chunks[: i + 1]) for i in range(len(chunks))]
    partials = [p for p in map(partial_json, so_far) if p is not None]
    assert partials[-1] == answer.model_dump()
    assert any(p.get("answer") and p["answer"] != answer.answer for p in partials)  # seen while growing
