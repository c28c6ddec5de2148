"""Per-record flow, round 2 (issue 24): every node row keeps ``_index``; a step's ``timeout_s``
counts the request, not the wait for an engine slot; a coalesced call outlives a cancelled record,
so its siblings' requests are sent once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import anyio
from tests.helpers import Answer, Question, read_jsonl

from chainette import Chain, ChatRequest, NodePolicy, SamplingParams, Step, apply, register_engine
from chainette.engines import registry
from chainette.engines.broker import EngineBroker
from chainette.engines.fake import FakeEngine
from chainette.runtime.context import RunContext
from chainette.runtime.ray_worker import ChunkResult, ChunkSink
from chainette.runtime.requests import RequestCache


def qa(engine: str, policy: NodePolicy | None = None) -> Step:
    return Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name=engine,
        user_prompt="{{ text }}",
        policy=policy,
    )


def test_every_row_of_a_step_or_apply_folder_keeps_its_index(run_dir: Path) -> None:
    # the first inputs answer last: rows land in completion order, each says its input position
    register_engine(
        "idx", backend="fake", max_batch_size=1, latency=lambda r: 0.3 if "q0" in str(r.messages) else 0
    )

    def shout(a: Answer) -> Answer:
        return Answer(answer=a.answer.upper(), confidence=a.confidence)

    texts = [f"q{i}" for i in range(6)]
    Chain("c", [qa("idx"), apply(shout, id="shout", write=True)]).run(
        [Question(text=t) for t in texts], output_dir=run_dir, ordered=False
    )
    for folder in ("qa", "shout"):
        rows = read_jsonl(run_dir / folder)
        assert sorted(r["_index"] for r in rows) == list(range(6)), folder
        assert rows[-1]["_index"] == 0  # the slow one, written last
    flat = {r["_id"]: r["_index"] for r in read_jsonl(run_dir / "flattened")}
    assert {r["_id"]: r["_index"] for r in read_jsonl(run_dir / "qa")} == flat


def test_a_steps_timeout_counts_the_request_not_the_wait_for_an_engine_slot(run_dir: Path) -> None:
    # one call at a time, two requests per call, each call 0.5 s: the 4th call of 8 records is sent
    # after 1.5 s of waiting; each request itself takes 0.5 s, well inside timeout_s=1.2
    register_engine("slot", backend="fake", max_concurrency=1, max_batch_size=2, latency=0.5)
    result = Chain("c", [qa("slot", NodePolicy(timeout_s=1.2))]).run(
        [Question(text=f"q{i}") for i in range(8)], output_dir=run_dir, cache="off"
    )
    assert result.counts["failures"] == 0, list(result.failures())
    assert result.counts["records_out"] == 8


class Sent(FakeEngine):
    """A fake back-end counting the requests it was sent, by prompt; each call takes 0.5 s."""

    sent: ClassVar[Counter[str]] = Counter()

    async def generate(self, requests: Any) -> Any:
        for request in requests:
            Sent.sent[request.messages[-1]["content"]] += 1
        await anyio.sleep(0.5)
        return await super().generate(requests)


def test_a_cancelled_record_does_not_make_its_siblings_in_a_call_send_again() -> None:
    registry.BACKENDS["sent_once"] = f"{__name__}:Sent"
    try:
        register_engine("co", backend="sent_once", max_batch_size=8, max_concurrency=1)
        Sent.sent.clear()
        answers: dict[str, str] = {}
        calls: list[int] = []

        async def main() -> None:
            broker = EngineBroker(Counter({"co": 1}), idle_timeout=None)
            ctx = RunContext(
                ChunkSink(ChunkResult()), broker, lambda kind, data: None, RequestCache(None, "off")
            )
            async with broker:
                engine, _ = await ctx.engine("co")
                coalescer = ctx.coalescer("co", engine)
                scopes = {text: anyio.CancelScope() for text in ("a", "b", "c")}

                async def ask(text: str) -> None:
                    request = ChatRequest(
                        messages=({"role": "user", "content": text},), sampling=SamplingParams()
                    )
                    with scopes[text]:
                        answers[text] = (await coalescer.generate([request]))[0].text

                async with anyio.create_task_group() as tg:
                    for text in scopes:  # the same moment: one call of three, started by "a"'s waiter
                        tg.start_soon(ask, text)
                    await anyio.sleep(0.2)
                    scopes["a"].cancel()  # a's record is cancelled while the call is out
                calls.append(coalescer.calls)

        anyio.run(main)
        assert Sent.sent == Counter({"a": 1, "b": 1, "c": 1})  # b and c were not sent again
        assert set(answers) == {"b", "c"} and calls == [1]
    finally:
        registry.BACKENDS.pop("sent_once", None)


def test_in_input_order_a_slow_first_record_lets_sixteen_windows_of_records_finish_behind_it(
    run_dir: Path,
) -> None:
    # 2 records in flight; the first takes 1 s. In input order its row holds the others' rows,
    # not their work: up to 16 x 2 finished records wait behind it (at 4 x 2 the reading paused
    # after 10, and the rest waited for the slow one)
    sent: list[tuple[str, float]] = []

    def latency(request: ChatRequest) -> float:
        sent.append((request.messages[-1]["content"], time.monotonic()))
        return 1.0 if request.messages[-1]["content"] == "q0" else 0.0

    register_engine("head", backend="fake", max_batch_size=1, latency=latency)
    result = Chain("c", [qa("head")]).run(
        [Question(text=f"q{i}") for i in range(60)], output_dir=run_dir, max_in_flight=2, cache="off"
    )
    assert [r["input.text"] for r in result.flattened()] == [f"q{i}" for i in range(60)]
    head = dict(sent)["q0"]
    while_slow = sum(1 for text, at in sent if text != "q0" and at < head + 0.9)
    assert while_slow >= 30, while_slow
