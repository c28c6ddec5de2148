"""The service mode: traces with events and results, cancellation, deadlines, capacity, the ledger,
recording, on the fake engine (the real engines: tests/serving and test_service_llama.py)."""

from __future__ import annotations

import json
import random
import time
import weakref
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from tests.helpers import Answer, echo, qa_step, read_jsonl

from chainette import Chain, ChainService, apply, register_engine
from chainette._errors import (
    ChainDefinitionError,
    InputError,
    ServiceFullError,
    TraceCancelledError,
    TraceFailedError,
)
from chainette.engines.base import ChatRequest
from chainette.graph.stream_ops import take

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def qa_chain(engine: str = "echo") -> Chain:
    return Chain(
        name="served",
        steps=[qa_step(engine)],
    )


class N(BaseModel):
    x: int


@pytest.fixture
def echo_engine() -> None:
    register_engine("echo", backend="fake", responder=echo)


async def test_a_trace_streams_its_events_and_returns_the_typed_output(echo_engine: None) -> None:
    async with ChainService(qa_chain()) as service:
        trace = await service.submit({"text": "hello"}, trace_id="t1")
        events = [e async for e in trace.events()]
        answer = await trace.result()
    kinds = [(e.kind, e.data.get("node")) for e in events if e.kind != "chunk"]
    assert kinds == [
        ("queued", None),
        ("started", None),
        ("node_started", "qa"),
        ("node_finished", "qa"),
        ("output", None),
    ]
    assert isinstance(answer, Answer) and answer.answer == "re: hello"
    # the step's answer arrived in pieces, between its start and its end, each with the new text only
    chunks = [e.data for e in events if e.kind == "chunk"]
    kinds_in_order = [e.kind for e in events]
    assert len(chunks) > 1
    assert (
        kinds_in_order.index("node_started")
        < kinds_in_order.index("chunk")
        < kinds_in_order.index("node_finished")
    )
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert Answer.model_validate_json("".join(c["delta"] for c in chunks)) == answer
    assert all(c["node"] == "qa" and set(c) == {"node", "seq", "delta", "final"} for c in chunks)
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]  # an empty piece ends it


async def test_without_token_streaming_there_are_no_chunks(echo_engine: None) -> None:
    async with ChainService(qa_chain(), stream_tokens=False) as service:
        trace = await service.submit({"text": "hello"})
        assert "chunk" not in [e.kind async for e in trace.events()]
        assert (await trace.result()).answer == "re: hello"
    # a late reader sees every event again, from the first
    assert [e.kind async for e in trace.events()][-1] == "output"
    assert service.counts["output"] == 1 and service.open_traces == 0


async def test_a_repeated_request_is_answered_from_the_ledger(ledger_path: Path) -> None:
    calls: list[str] = []

    def counted(request: ChatRequest) -> dict[str, Any]:
        calls.append(request.messages[-1]["content"])
        return echo(request)

    register_engine("echo", backend="fake", responder=counted)
    async with ChainService(qa_chain()) as service:
        first = await (await service.submit({"text": "same"})).result()
        second = await (await service.submit({"text": "same"})).result()
    async with ChainService(qa_chain()) as service:  # a new service on the same ledger
        third = await (await service.submit({"text": "same"})).result()
    assert first == second == third
    assert calls == ["same"]
    assert ledger_path.is_file()  # noqa: ASYNC240 - a test assertion


async def test_failed_filtered_and_invalid_submissions_say_what_happened() -> None:
    def boom(n: N) -> N:
        if n.x == 2:
            raise ValueError("two is not allowed")
        return n

    def drop_odd(n: N) -> N | None:
        return None if n.x % 2 else n

    chain = Chain(name="py", steps=[apply(boom), apply(drop_odd)])
    async with ChainService(chain) as service:
        failed = await service.submit({"x": 2})
        with pytest.raises(TraceFailedError) as info:
            await failed.result()
        assert info.value.node_id == "boom" and "two is not allowed" in info.value.message
        events = [e async for e in failed.events()]
        assert events[-1].kind == "failed" and events[-1].data["node"] == "boom"
        assert await (await service.submit({"x": 3})).result() is None  # filtered
        assert await (await service.submit({"x": 4})).result() == N(x=4)
        with pytest.raises(InputError, match="input model N"):
            await service.submit({"x": "not a number"})
    assert service.counts == {"failed": 1, "filtered": 1, "output": 1}


async def test_a_whole_stream_node_is_refused_before_anything_starts() -> None:
    chain = Chain(name="t", steps=[apply(lambda n: n, id="f", input_model=N, output_model=N), take(3)])
    with pytest.raises(ChainDefinitionError, match="whole input stream"):
        async with ChainService(chain):
            pass


async def test_cancelling_a_queued_trace_drops_it_and_an_in_flight_one_stops_it() -> None:
    release = anyio.Event()
    ran: list[int] = []

    async def wait(n: N) -> N:
        ran.append(n.x)
        if n.x < 10:
            await release.wait()  # in flight until released (or cancelled)
        return n

    chain = Chain(name="py", steps=[apply(wait)])
    async with ChainService(chain, concurrency=1) as service:
        running = await service.submit({"x": 1}, trace_id="running")
        queued = await service.submit({"x": 10}, trace_id="queued")
        await anyio.sleep(0.05)
        assert ran == [1]  # the second waits for a running slot
        assert service.cancel("queued")
        with pytest.raises(TraceCancelledError):
            await queued.result()
        assert not service.cancel("queued")  # already ended
        other = await service.submit({"x": 2}, trace_id="other")
        started = time.monotonic()
        assert running.cancel()
        with pytest.raises(TraceCancelledError):
            await running.result()
        assert time.monotonic() - started < 1.0
        release.set()
        assert await other.result() == N(x=2)
    assert ran == [1, 2]  # the cancelled queued trace never ran
    assert service.counts == {"cancelled": 2, "output": 1}


async def test_cancelling_the_trace_that_sends_a_shared_request_does_not_fail_its_twin() -> None:
    """Two traces ask the same thing: one sends, the other waits for that answer. Cancelling the
    sender must not fail the waiter: it sends the request itself."""
    register_engine("slow", backend="fake", responder=echo, latency=0.3)
    async with ChainService(qa_chain("slow"), cache="off") as service:
        sender = await service.submit({"text": "same"}, trace_id="sender")
        await anyio.sleep(0.05)
        twin = await service.submit({"text": "same"}, trace_id="twin")
        await anyio.sleep(0.05)
        sender.cancel()
        with pytest.raises(TraceCancelledError):
            await sender.result()
        assert (await twin.result()).answer == "re: same"


async def test_a_trace_past_its_deadline_fails_with_that_reason() -> None:
    async def slow(n: N) -> N:
        await anyio.sleep(5)
        return n

    async def quick(n: N) -> N:
        return n

    chain = Chain(name="py", steps=[apply(quick), apply(slow)])
    async with ChainService(chain) as service:
        started = time.monotonic()
        trace = await service.submit({"x": 1}, deadline_s=0.2)
        with pytest.raises(TraceFailedError, match=r"deadline of 0\.2 s") as info:
            await trace.result()
        assert info.value.node_id == "deadline"
        assert 0.15 < time.monotonic() - started < 2
        nodes = [e.data.get("node") async for e in trace.events() if e.kind == "node_finished"]
        assert nodes == ["quick"]


async def test_a_deadline_cuts_the_engine_call_and_names_the_step() -> None:
    register_engine("slow", backend="fake", responder=echo, latency=5.0)
    async with ChainService(qa_chain("slow"), cache="off") as service:
        started = time.monotonic()
        trace = await service.submit({"text": "slow"}, deadline_s=0.3)
        with pytest.raises(TraceFailedError, match=r"deadline of 0\.3 s passed") as info:
            await trace.result()
        assert (info.value.node_id, info.value.error_type) == ("qa", "budget_exceeded")
        assert time.monotonic() - started < 2
        fast = await service.submit({"text": "no deadline"})
        assert fast.deadline_s is None


async def test_a_full_service_refuses_or_makes_the_submission_wait() -> None:
    release = anyio.Event()

    async def wait(n: N) -> N:
        await release.wait()
        return n

    chain = Chain(name="py", steps=[apply(wait)])
    async with ChainService(chain, capacity=1, when_full="refuse") as service:
        first = await service.submit({"x": 1})
        with pytest.raises(ServiceFullError, match="full"):
            await service.submit({"x": 2})
        release.set()
        await first.result()
        assert await (await service.submit({"x": 3})).result() == N(x=3)  # room again

    release = anyio.Event()
    async with ChainService(chain, capacity=1) as service:
        first = await service.submit({"x": 1})
        waited: list[float] = []

        async def second() -> None:
            started = time.monotonic()
            await service.submit({"x": 2})
            waited.append(time.monotonic() - started)

        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.sleep(0.2)
            assert waited == []  # still waiting for room
            release.set()
        assert waited and waited[0] >= 0.15
        await first.result()


async def test_a_recording_service_leaves_a_run_folder_like_a_batch_run(
    echo_engine: None, tmp_path: Path
) -> None:
    def boom(answer: Answer) -> Answer:
        if "bad" in answer.answer:
            raise ValueError("bad answer")
        return answer

    chain = Chain(name="served", steps=[*qa_chain().items, apply(boom)])
    folder = tmp_path / "served"
    async with ChainService(chain, record_to=folder) as service:
        for text in ("one", "two", "bad"):
            trace = await service.submit({"text": text}, trace_id=text)
            await trace.done.wait()
    rows = read_jsonl(folder / "flattened")
    assert sorted(r["_id"] for r in rows) == ["one", "two"]
    assert {r["qa.answer"] for r in rows} == {"re: one", "re: two"}
    failures = read_jsonl(folder / "failures.jsonl")
    assert [(f["_id"], f["node"]) for f in failures] == [("bad", "boom")]
    assert len(read_jsonl(folder / "qa")) == 3
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["mode"] == "service" and meta["status"] == "completed"
    assert meta["counts"]["records_in"] == 3 and meta["counts"]["records_out"] == 2
    assert meta["served"] == {"output": 2, "failed": 1}
    assert (folder / "graph.json").exists()


@pytest.mark.timeout(120)
async def test_a_thousand_traces_with_a_fifth_cancelled_at_random(ledger_path: Path) -> None:
    """Every trace not cancelled gets its own right answer; nothing is left running."""
    import asyncio
    import gc

    # calls of 4 requests, 0.1 s each, 32 at once: 1,000 traces take about 0.8 s, so the cancels
    # (within 0.5 s) find most of theirs still running
    register_engine("echo", backend="fake", responder=echo, latency=0.1, max_concurrency=32, max_batch_size=4)
    rng = random.Random(7)
    cancel = set(rng.sample(range(1000), 200))
    tasks_before = len(asyncio.all_tasks())
    async with ChainService(qa_chain(), capacity=2000, concurrency=256) as service:
        handles = [await service.submit({"text": f"q{i}"}, trace_id=f"t{i}") for i in range(1000)]

        async def cancel_later(i: int) -> None:
            await anyio.sleep(rng.random() * 0.5)
            service.cancel(f"t{i}")

        async with anyio.create_task_group() as tg:
            for i in cancel:
                tg.start_soon(cancel_later, i)
        wrong, cancelled = [], 0
        for i, handle in enumerate(handles):
            try:
                answer = await handle.result()
            except TraceCancelledError:
                cancelled += 1
                assert i in cancel
                continue
            if answer.answer != f"re: q{i}":
                wrong.append(i)
        assert wrong == []
        assert 0 < cancelled <= 200  # some finished before their cancel came
        assert service.open_traces == 0
    gc.collect()
    assert len(asyncio.all_tasks()) <= tasks_before
    assert service.counts["output"] + service.counts["cancelled"] == 1000
    # nothing holds the traces once their handles are dropped (no memory left behind)
    alive = [weakref.ref(h) for h in handles]
    del handles, handle
    gc.collect()
    assert sum(ref() is not None for ref in alive) == 0


@pytest.mark.timeout(120)
async def test_many_traces_over_http_with_some_cancelled_leave_no_connection_open() -> None:
    """300 traces streaming from the stub server over real HTTP, a fifth cancelled mid-stream:
    the others get their own answers, and once the service is closed no socket to the server is left."""
    import psutil

    from chainette.engines.stub_server import StubServer

    rng = random.Random(3)
    cancel = set(rng.sample(range(300), 60))
    with StubServer(stream_chunks=6, stream_delay=0.01) as stub:
        register_engine("stub", backend="openai", model="stub", base_url=stub.base_url, max_retries=0)
        port = stub.port

        def sockets() -> int:
            return sum(
                1 for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port
            )

        async with ChainService(qa_chain("stub"), cache="off", concurrency=64) as service:
            handles = [await service.submit({"text": f"q{i}"}, trace_id=f"h{i}") for i in range(300)]

            async def cancel_later(i: int) -> None:
                await anyio.sleep(rng.random() * 0.3)
                service.cancel(f"h{i}")

            async with anyio.create_task_group() as tg:
                for i in cancel:
                    tg.start_soon(cancel_later, i)
            answered = 0
            for i, handle in enumerate(handles):
                try:
                    answer = await handle.result()
                except TraceCancelledError:
                    assert i in cancel
                    continue
                answered += 1
                assert answer.answer  # the stub's schema-valid answer
            assert answered >= 240
            assert sockets() > 0  # the engine keeps its pool open while the service runs
        assert sockets() == 0
        assert stub.stats["streams"] >= answered


async def test_cancelling_traces_on_a_real_http_server_closes_the_in_flight_request() -> None:
    """On the stub server over real HTTP: the in-flight trace's connection is closed at once, the
    queued one never reaches the server, and a trace after them is answered."""
    from chainette.engines.stub_server import StubServer

    with StubServer(stream_chunks=20, stream_delay=0.1) as stub:
        register_engine("stub", backend="openai", model="stub", base_url=stub.base_url, max_retries=0)
        async with ChainService(qa_chain("stub"), cache="off", concurrency=1) as service:
            in_flight = await service.submit({"text": "long"}, trace_id="in-flight")
            queued = await service.submit({"text": "never sent"}, trace_id="queued")
            async for event in in_flight.events():
                if event.kind == "chunk":
                    break
            assert service.cancel("queued")
            cancelled_at = time.monotonic()
            assert in_flight.cancel()
            with pytest.raises(TraceCancelledError):
                await in_flight.result()
            with pytest.raises(TraceCancelledError):
                await queued.result()
            assert await anyio.to_thread.run_sync(stub.disconnected.wait, 5)
            closed_after = stub.disconnects[0].at - cancelled_at
            assert stub.disconnects[0].chunks_sent < 20  # it was cut, not finished
            after = await service.submit({"text": "after"})
            assert (await after.result()).answer
    assert 0 <= closed_after < 1.0
    assert [body["messages"][-1]["content"] for _, _, body in stub.received] == ["long", "after"]


async def test_nodes_inside_branches_report_their_own_start_and_end() -> None:
    from chainette import Branch

    def a(n: N) -> N:
        return N(x=n.x + 1)

    def b(n: N) -> N:
        return N(x=n.x * 10)

    def c(n: N) -> N:
        return N(x=-n.x)

    chain = Chain(
        name="nested",
        steps=[apply(a), [Branch("l", [apply(b)]).join("lx"), Branch("r", [apply(c)]).join("rx")]],
    )
    async with ChainService(chain) as service:
        trace = await service.submit({"x": 1})
        events = [e async for e in trace.events()]
        await trace.result()
    finished = {e.data["node"]: e.data for e in events if e.kind == "node_finished"}
    assert {"a", "b", "c"} <= set(finished)
    assert finished["b"]["output"] == {"x": 20} and finished["c"]["output"] == {"x": -2}
    started = [e.data["node"] for e in events if e.kind == "node_started"]
    assert started.index("a") < started.index("b") and started.index("a") < started.index("c")


async def test_a_refused_submission_holds_no_slot(echo_engine: None) -> None:
    """Every check comes before the slot is taken, and a failure after it gives the slot back."""

    def explode_on_boom(event: Any) -> None:
        if event.trace_id == "boom":
            raise RuntimeError("a listener that raised")

    async with ChainService(qa_chain(), capacity=1, when_full="refuse", on_event=explode_on_boom) as service:
        refused: list[dict[str, Any]] = [
            {"deadline_s": "soon"},
            {"deadline_s": float("nan")},
            {"deadline_s": -1},
            {"deadline_s": True},
            {"trace_id": "evil\n00:00:00 trace admin output"},
            {"trace_id": ""},
            {"trace_id": "x" * 129},
            {"trace_id": 7},
        ]
        for options in refused:
            with pytest.raises(InputError, match=r"deadline_s must be a positive number|A-Z a-z 0-9"):
                await service.submit({"text": "x"}, **options)
        with pytest.raises(InputError):
            await service.submit({"txt": "x"})
        with pytest.raises(RuntimeError, match="a listener that raised"):
            await service.submit({"text": "x"}, trace_id="boom")
        assert service.open_traces == 0 and service.counts == {}
        first = await service.submit({"text": "one"}, trace_id="ok.1:a_b-C")  # the one slot is free
        with pytest.raises(ServiceFullError):
            await service.submit({"text": "two"})
        assert (await first.result()).answer == "re: one"


async def test_a_long_streamed_answer_is_kept_once_for_late_readers() -> None:
    """Live readers get each piece (``seq``, ``delta``); a reader that comes after gets one
    snapshot of the answer, not the pieces: the replay buffer holds the text once."""
    text = "abcdefghij" * 2000

    register_engine("long", backend="fake", responder=lambda request: {"answer": text}, stream_pieces=2000)

    class Long(BaseModel):
        answer: str

    from chainette import Step

    step = Step(id="say", input_model=N, output_model=Long, engine_name="long", user_prompt="{{ x }}")
    async with ChainService(Chain(name="long", steps=[step]), cache="off") as service:
        trace = await service.submit({"x": 1})
        live = [e async for e in trace.events()]
        late = [e async for e in trace.events()]
        history_size = len(trace._history)
    pieces = [e.data for e in live if e.kind == "chunk"]
    assert len(pieces) >= 1800 and [p["seq"] for p in pieces] == list(range(len(pieces)))
    assert json.loads("".join(p["delta"] for p in pieces)) == {"answer": text}
    snapshots = [e.data for e in late if e.kind == "chunk"]
    assert len(snapshots) == 1 and snapshots[0]["snapshot"] is True
    assert json.loads(snapshots[0]["text"]) == {"answer": text} and snapshots[0]["seq"] == len(pieces) - 1
    assert [e.kind for e in late if e.kind != "chunk"] == [e.kind for e in live if e.kind != "chunk"]
    assert history_size <= 7  # queued, started, node_started, the snapshot, node_finished, output


async def test_a_reader_far_behind_gets_pieces_joined(echo_engine: None) -> None:
    text = "x" * 3000
    register_engine("many", backend="fake", responder=lambda request: {"answer": text}, stream_pieces=3000)

    class Long(BaseModel):
        answer: str

    from chainette import Step

    step = Step(id="say", input_model=N, output_model=Long, engine_name="many", user_prompt="{{ x }}")
    async with ChainService(Chain(name="many", steps=[step]), cache="off") as service:
        trace = await service.submit({"x": 1})
        slow = trace.events()
        first = await slow.__anext__()  # registered, then not read while the trace runs
        await trace.done.wait()
        rest = [first] + [e async for e in slow]
    pieces = [e.data for e in rest if e.kind == "chunk"]
    assert len(pieces) < 1000  # past 256 waiting, neighbouring pieces were joined
    assert json.loads("".join(p["delta"] for p in pieces)) == {"answer": text}
