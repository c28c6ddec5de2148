"""``Engine.stream``: deltas as they are produced, then the completion ``generate`` gives.

Over real HTTP against the stub server on 127.0.0.1, on the embedded llama.cpp engine with the
bundled model, and on the fake engine.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, Field
from tests.helpers import decoding, seconds_until_freed, with_llama_engine

from chainette import ChatRequest, Completion, FakeEngine, SamplingParams, register_engine
from chainette.engines.base import Engine
from chainette.engines.broker import EngineBroker
from chainette.engines.openai_http import OpenAIEngine
from chainette.engines.stub_server import Faults, StubServer

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 40}},
    "required": ["answer"],
}


def request(
    text: str = "What is the capital of France?", schema: Any = SCHEMA, max_tokens: int = 48
) -> ChatRequest:
    return ChatRequest(
        messages=({"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}),
        json_schema=schema,
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
    )


async def collect(engine: Engine, req: ChatRequest) -> tuple[list[str], Completion]:
    """The deltas and the final completion; fails unless exactly one completion comes, last."""
    items = [item async for item in engine.stream(req)]
    *deltas, final = items
    assert isinstance(final, Completion)
    assert all(isinstance(d, str) for d in deltas)
    return [d for d in deltas if isinstance(d, str)], final


# ---- over HTTP: the openai engine and the stub server ------------------------------------------


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(reasoning="thinking...") as server:
        yield server


def run_http(base_url: str, body: Any, model: str = "m", **options: Any) -> Any:
    async def main() -> Any:
        engine = OpenAIEngine(model, base_url=base_url, **{"backoff_base": 0.01, **options})
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.close()

    return anyio.run(main)


def test_http_deltas_arrive_in_pieces_and_end_with_generates_completion(stub: StubServer) -> None:
    async def body(engine: OpenAIEngine) -> tuple[list[str], Completion, Completion]:
        deltas, final = await collect(engine, request())
        (generated,) = await engine.generate([request()])
        return deltas, final, generated

    deltas, final, generated = run_http(stub.base_url, body)
    assert len(deltas) >= 3
    assert "".join(deltas) == final.text == generated.text
    assert final == generated  # usage, finish reason, reasoning, attempts: what the ledger keeps
    assert final.completion_tokens > 0 and final.reasoning == "thinking..."
    assert "thinking..." not in "".join(deltas)  # reasoning goes to the completion, not the deltas
    streamed = [body for _, _, body in stub.received if body.get("stream")]
    assert len(streamed) == 1 and streamed[0]["stream_options"] == {"include_usage": True}
    assert stub.stats["streams"] == 1


@pytest.mark.parametrize(
    "faults",
    [Faults(rate_500=1.0), Faults(rate_429=1.0, retry_after="0"), Faults(rate_500=0.5, seed=1)],
    ids=["500", "429", "500-then-ok"],
)
def test_http_failures_before_the_first_delta_are_retried_and_mapped_as_generate_does(faults: Faults) -> None:
    def answer(streamed: bool) -> tuple[Completion, int]:
        async def body(engine: OpenAIEngine) -> Completion:
            if streamed:
                return (await collect(engine, request()))[1]
            return (await engine.generate([request()]))[0]

        with StubServer(faults=faults) as stub:  # the same faults drawn in the same order
            completion = run_http(stub.base_url, body, max_retries=2)
            text = completion.text.replace(stub.base_url, "<stub>")  # each stub has its own port
            return completion.model_copy(update={"text": text}), stub.stats["requests"]

    streamed, sent_streamed = answer(streamed=True)
    generated, sent_generated = answer(streamed=False)
    assert streamed == generated and sent_streamed == sent_generated
    if faults.rate_500 == 1.0:
        assert streamed.finish_reason == "error" and streamed.text.startswith("HTTP 500")
        assert "after 3 attempt(s)" in streamed.text and streamed.attempts == 3
    elif faults.rate_429:
        assert streamed.finish_reason == "error" and streamed.text.startswith("HTTP 429")
    else:
        assert streamed.finish_reason == "stop" and streamed.attempts > 1  # retried, then answered


def test_http_stream_broken_after_a_delta_ends_with_an_error_not_a_retry(stub: StubServer) -> None:
    stub.faults = Faults(rate_cut=1.0)
    deltas, final = run_http(stub.base_url, lambda engine: collect(engine, request()))
    assert deltas  # the first piece of content came through
    assert final.finish_reason == "error" and "not retried" in final.text
    assert "connection failed" in final.text
    assert stub.stats["requests"] == 1  # sending again would stream the same deltas twice


def test_closing_an_http_stream_closes_its_connection(stub: StubServer) -> None:
    stub.stream_delay = 0.3  # the whole answer would take over a second

    async def body(engine: OpenAIEngine) -> list[float]:
        waits = []
        # aclose() after the first delta
        items = engine.stream(request())
        assert isinstance(await items.__anext__(), str)
        closed_at = time.monotonic()
        await items.aclose()
        waits.append(await disconnect_after(stub, closed_at))
        # cancelling the task that reads it, while it waits for the next delta
        stub.disconnected.clear()
        first = anyio.Event()

        async def read() -> None:
            async for _ in engine.stream(request()):
                first.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await first.wait()
            await anyio.sleep(0.05)
            closed_at = time.monotonic()
            tg.cancel_scope.cancel()
        waits.append(await disconnect_after(stub, closed_at))
        assert engine._slots.borrowed_tokens == 0  # the concurrency slot was given back
        return waits

    waits = run_http(stub.base_url, body)
    print(f"aclose -> stub sees the disconnect: {waits[0] * 1000:.2f} ms; cancel -> {waits[1] * 1000:.2f} ms")
    assert stub.stats["disconnects"] == 2 and all(d.chunks_sent < 6 for d in stub.disconnects)
    assert all(0 <= w < 2.0 for w in waits)


async def disconnect_after(stub: StubServer, since: float) -> float:
    seen = await anyio.to_thread.run_sync(stub.disconnected.wait, 2.0)
    assert seen, "the stub never saw the client close the stream"
    return stub.disconnects[-1].at - since


def test_http_streams_share_the_engines_concurrency_limit(stub: StubServer) -> None:
    stub.stream_delay = 0.05

    async def body(engine: OpenAIEngine) -> tuple[int, int]:
        first = engine.stream(request())
        await first.__anext__()
        second: list[Any] = []

        async def read_second() -> None:
            second.extend([item async for item in engine.stream(request("Another question?"))])

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_second)
            await anyio.sleep(0.6)  # over the timeout: waiting in httpx's pool instead would time out
            while_first_open = stub.stats["requests"]
            await first.aclose()
        assert isinstance(second[-1], Completion) and second[-1].finish_reason == "stop"
        assert second[-1].attempts == 1
        return while_first_open, stub.stats["requests"]

    while_first_open, after = run_http(stub.base_url, body, max_concurrency=1, timeout=0.25, max_retries=1)
    assert while_first_open == 1  # the second stream waited for the only slot
    assert after == 2


@pytest.mark.llama
@pytest.mark.timeout(180)
def test_http_streams_from_a_real_server_directly_and_through_the_stub(llama_server: str) -> None:
    """llama-cpp-python's server: its events, its dialect; and the stub relaying them as an upstream."""

    async def body(engine: OpenAIEngine) -> list[tuple[list[str], Completion, Completion]]:
        out = []
        for schema in (SCHEMA, None):
            (generated,) = await engine.generate([request(schema=schema)])
            out.append((*await collect(engine, request(schema=schema)), generated))
        return out

    with StubServer(upstream=llama_server) as proxy:
        for base_url in (llama_server, proxy.base_url):
            for deltas, final, generated in run_http(base_url, body, model="smollm2"):
                assert len(deltas) > 1 and "".join(deltas) == final.text == generated.text
                assert final.finish_reason == generated.finish_reason
                # this server sends no usage with a stream: counts stay 0 (generate's has them)
        assert proxy.stats["streams"] == 2


# ---- the fake engine and the broker's handle -----------------------------------------------------


def test_fake_engine_streams_the_answer_generate_gives() -> None:
    engine = FakeEngine(stream_pieces=4)

    async def main() -> tuple[list[str], Completion, Completion]:
        deltas, final = await collect(engine, request())
        (generated,) = await engine.generate([request()])
        return deltas, final, generated

    deltas, final, generated = anyio.run(main)
    assert engine.supports_streaming and len(deltas) == 4
    assert "".join(deltas) == final.text and final == generated


def test_an_engine_without_streaming_yields_its_completion_alone() -> None:
    class Plain(Engine):
        async def generate(self, requests: Any) -> list[Completion]:
            return [Completion(text="whole") for _ in requests]

    items = anyio.run(lambda: _items(Plain(), request()))
    assert not Plain.supports_streaming and items == [Completion(text="whole")]


async def _items(engine: Engine, req: ChatRequest) -> list[str | Completion]:
    return [item async for item in engine.stream(req)]


def test_a_brokers_handle_streams_under_a_lease() -> None:
    register_engine("streamer", backend="fake", stream_pieces=3)

    async def main() -> tuple[list[int], list[str | Completion], int]:
        broker = EngineBroker(Counter({"streamer": 1}))
        try:
            handle = await broker.get("streamer")
            in_flight = []
            items: list[str | Completion] = []
            async for item in handle.stream(request()):
                in_flight.append(broker._in_flight["streamer"])
                items.append(item)
            assert handle.supports_streaming
            return in_flight, items, broker._in_flight["streamer"]
        finally:
            await broker.aclose()

    in_flight, items, after = anyio.run(main)
    assert len(items) == 4 and isinstance(items[-1], Completion)
    assert set(in_flight) == {1} and after == 0  # leased while streaming, released at the end


# ---- the embedded llama.cpp engine ------------------------------------------------------------------


class Answer(BaseModel):
    answer: str = Field(max_length=60)
    confidence: float


LLAMA_REQUESTS = [
    request("What is the capital of France?", Answer.model_json_schema()),
    request("Which planet is known as the red planet?", Answer.model_json_schema()),
    request("Say hello in Japanese and French.", None),
    request("Write an emoji-rich greeting: 😀🎉", None, max_tokens=40),  # characters split across tokens
]
STOP = "William Shakespeare"
"""Two tokens in the answer below: the first must be held back until the second shows it is a stop."""
STOPPED = request("Who wrote Romeo and Juliet?", None, max_tokens=32).model_copy(
    update={"sampling": SamplingParams(temperature=0, max_tokens=32, stop=(STOP,))}
)


@pytest.mark.llama
@pytest.mark.timeout(300)
def test_llama_streams_pieces_that_join_into_generates_completion() -> None:
    async def body(engine: Any) -> list[tuple[list[str], Completion, Completion]]:
        out = []
        for req in LLAMA_REQUESTS:
            deltas, final = await collect(engine, req)
            (generated,) = await engine.generate([req])
            out.append((deltas, final, generated))
        (unstopped,) = await engine.generate([request("Who wrote Romeo and Juliet?", None, max_tokens=32)])
        assert STOP in unstopped.text  # the stop string does come up
        deltas, final = await collect(engine, STOPPED)
        (generated,) = await engine.generate([STOPPED])
        assert STOP not in final.text and len(final.text) < len(unstopped.text)
        return [*out, (deltas, final, generated)]

    results = with_llama_engine(body, parallel=4)
    print("deltas per answer:", [len(deltas) for deltas, _, _ in results])
    print("tokens per answer:", [final.completion_tokens for _, final, _ in results])
    for deltas, final, generated in results:
        assert len(deltas) > 1
        assert "".join(deltas) == final.text
        assert final == generated
        assert all(deltas)  # no empty pieces
    assert any(ord(ch) > 0xFFFF for ch in results[3][1].text)  # the emoji answer has 4-byte characters
    Answer.model_validate_json(results[0][1].text)


@pytest.mark.llama
@pytest.mark.timeout(300)
def test_closing_a_llama_stream_frees_its_sequence_and_spares_its_neighbour() -> None:
    long_schema = {
        "type": "object",
        "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 200}},
        "required": ["numbers"],
    }
    doomed = request("List 200 numbers.", long_schema, max_tokens=900)
    neighbour = request("Who wrote Romeo and Juliet?", Answer.model_json_schema())

    async def body(engine: Any) -> tuple[int, float, Completion, Completion]:
        decoder = engine._decoders[0]
        (expected,) = await engine.generate([neighbour])
        result: list[Completion] = []

        async def run_neighbour() -> None:
            result.extend(await engine.generate([neighbour]))

        async with anyio.create_task_group() as tg:
            items = engine.stream(doomed)
            first = await items.__anext__()
            assert isinstance(first, str)
            tg.start_soon(run_neighbour)
            for _ in range(5):  # a few more deltas, with the neighbour decoding alongside
                await items.__anext__()
            seq, tokens = decoding(decoder, doomed)
            assert decoder.busy_sequences() == 2
            await items.aclose()
            freed_after = await seconds_until_freed(decoder, seq, tokens)
        return len(tokens), freed_after, result[0], expected

    cells_before, freed_after, neighbour_result, expected = with_llama_engine(body, parallel=4)
    print(f"aclose -> sequence freed: {freed_after * 1000:.1f} ms")
    assert cells_before > 20  # it was decoding
    assert freed_after < 1.0  # at the loop's next turn, not after 900 tokens
    assert neighbour_result == expected  # the neighbour in the same batch finished unchanged


@pytest.mark.llama
@pytest.mark.timeout(300)
def test_llama_gbnf_yields_its_completion_alone() -> None:
    req = request("What is the capital of France?", Answer.model_json_schema(), max_tokens=32)

    async def body(engine: Any) -> tuple[bool, list[str | Completion], Completion]:
        items = await _items(engine, req)
        (generated,) = await engine.generate([req])
        return engine.supports_streaming, items, generated

    supports, items, generated = with_llama_engine(body, grammar="gbnf")
    assert not supports and items == [generated]
