"""Engines by name from Python: ``chainette.engine(name)`` (async, through the broker: lazy
start, release at the end of the block) and ``chainette.generate(name, prompt)`` (sync)."""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import pytest

import chainette
from chainette import ChainetteError, ChatRequest, Completion, UnknownEngineError, register_engine
from chainette.engines import registry
from chainette.engines.fake import FakeEngine
from chainette.engines.stub_server import StubServer


class Tracked(FakeEngine):
    """A fake that notes when instances start and close, and the requests they got."""

    log: ClassVar[list[str]] = []
    seen: ClassVar[list[ChatRequest]] = []

    async def start(self) -> None:
        Tracked.log.append("start")
        await super().start()

    async def close(self) -> None:
        Tracked.log.append("close")
        await super().close()

    async def generate(self, requests: Any) -> Any:
        Tracked.seen.extend(requests)
        return await super().generate(requests)


@pytest.fixture
def tracked(monkeypatch: pytest.MonkeyPatch) -> type[Tracked]:
    monkeypatch.setitem(registry.BACKENDS, "tracked", f"{Tracked.__module__}:Tracked")
    Tracked.log, Tracked.seen = [], []
    register_engine("demo", backend="tracked", responder=lambda r: r.messages[-1]["content"].upper())
    return Tracked


def test_an_engine_borrowed_by_name_starts_on_first_use_and_is_released_after(tracked: type[Tracked]) -> None:
    async def main() -> list[str]:
        async with chainette.engine("demo") as e:
            assert tracked.log == []  # lazy: nothing started yet
            answers = await e.generate(["hi", [{"role": "user", "content": "there"}]], system="Be loud.")
            more = await e.generate([ChatRequest(messages=({"role": "user", "content": "again"},))])
            assert tracked.log == ["start"]  # one start, shared by both calls
            pieces = [p async for p in e.stream("streamed")]
        assert tracked.log == ["start", "close"]
        assert isinstance(pieces[-1], Completion) and "".join(p for p in pieces if isinstance(p, str))
        return [a.text for a in [*answers, *more]]

    assert anyio.run(main) == ["HI", "THERE", "AGAIN"]
    assert [m["role"] for m in tracked.seen[0].messages] == ["system", "user"]
    assert tracked.seen[0].messages[0]["content"] == "Be loud."


def test_the_sync_form_answers_one_prompt_or_a_list(tracked: type[Tracked]) -> None:
    one = chainette.generate("demo", [{"role": "user", "content": "one"}])
    assert isinstance(one, Completion) and one.text == "ONE"
    many = chainette.generate("demo", ["a", "b"])
    assert isinstance(many, list) and [c.text for c in many] == ["A", "B"]
    assert tracked.log == ["start", "close", "start", "close"]


def test_mistakes_are_named(tracked: type[Tracked]) -> None:
    with pytest.raises(UnknownEngineError, match="demo"):
        chainette.generate("dmeo", "hi")

    async def inside_async() -> None:
        with pytest.raises(ChainetteError, match=r"async with chainette.engine\('demo'\)"):
            chainette.generate("demo", "hi")
        async with chainette.engine("demo") as e:
            with pytest.raises(TypeError, match="wrap a single one in a list"):
                await e.generate("hi")  # type: ignore[arg-type]

    anyio.run(inside_async)
    assert tracked.log == []  # nothing started for a mistake


def test_an_http_engine_by_name_through_the_stub_server() -> None:
    with StubServer(api_key=None) as stub:
        register_engine("remote", backend="openai", model="m", base_url=stub.base_url)
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        answer = chainette.generate("remote", "What is 2 + 2?", json_schema=schema)
        assert isinstance(answer, Completion) and answer.finish_reason == "stop"
        assert "answer" in answer.text and stub.stats["requests"] == 1
