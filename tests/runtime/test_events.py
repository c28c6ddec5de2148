"""One event stream: batch runs and served traces hand every event to middleware as an
``Event``; ``on_event`` keeps working beside it; a failing middleware never stops the work."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, echo, qa_step

from chainette import Backoff, Chain, ChainService, ChatRequest, Event, NodePolicy, apply, register_engine
from chainette.engines import registry
from chainette.engines.fake import FakeEngine
from chainette.runtime.events import PER_RECORD


class Note(BaseModel):
    note: str


def qa_then_note() -> Chain:
    register_engine("fake", backend="fake")
    return Chain(
        name="events",
        steps=[
            qa_step("fake"),
            apply(lambda a: Note(note=a.answer[:5]), id="note", input_model=Answer, output_model=Note),
        ],
    )


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def test_a_batch_run_hands_every_run_event_to_middleware_and_to_on_event(tmp_path: Path) -> None:
    plain: list[tuple[str, dict[str, Any]]] = []
    collect = Collect()
    before = time.time()
    result = qa_then_note().run(
        [Question(text=f"q {i}") for i in range(3)],
        tmp_path / "run",
        on_event=lambda kind, data: plain.append((kind, data)),
        middleware=[collect],
    )
    kinds = collect.kinds()
    assert kinds == [k for k, _ in plain]  # one stream, two forms
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert {"engine_started", "node_progress", "engine_released"} <= set(kinds)
    assert all(e.trace_id is None for e in collect.events)
    assert [e.data for e in collect.events] == [d for _, d in plain]
    assert before <= collect.events[0].at <= collect.events[-1].at <= time.time()
    assert collect.events[-1].data["counts"] == result.counts
    assert "middleware" not in result.metadata["config"]  # a listener, not configuration


def test_a_failing_middleware_is_logged_once_and_never_stops_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(event: Event) -> None:
        calls.append(event.kind)
        raise RuntimeError("my exporter is down")

    after = Collect()
    with caplog.at_level(logging.ERROR, logger="chainette.events"):
        result = qa_then_note().run(
            [Question(text=f"q {i}") for i in range(3)], tmp_path / "run", middleware=[broken, after]
        )
    assert result.metadata["status"] == "completed" and result.counts["records_out"] == 3
    assert len(calls) == len(after.events) > 3  # it kept being called, and the next one saw everything
    logged = [r for r in caplog.records if r.name == "chainette.events"]
    assert len(logged) == 1
    assert "run goes on" in logged[0].getMessage() and "my exporter is down" in logged[0].exc_text


def test_record_failures_reach_middleware(tmp_path: Path) -> None:
    def boom(q: Question) -> Question:
        raise ValueError("no")

    chain = Chain(name="fails", steps=[apply(boom, id="boom")])
    collect = Collect()
    chain.run([Question(text="a")], tmp_path / "run", middleware=[collect])
    [failed] = [e for e in collect.events if e.kind == "record_failed"]
    assert failed.data["node"] == "boom" and "no" in failed.data["message"]


def test_event_as_dict_is_json_ready() -> None:
    event = Event("node_progress", {"node": "qa", "done": 2}, "t-1", 1718000000.123456)
    assert event.as_dict() == {
        "kind": "node_progress",
        "trace_id": "t-1",
        "at": 1718000000.1235,
        "node": "qa",
        "done": 2,
    }
    assert "trace_id" not in Event("run_started", {}).as_dict()
    json.dumps(event.as_dict())


def test_a_service_hands_trace_and_runtime_events_to_middleware_tagged_with_the_trace() -> None:
    register_engine("echo", backend="fake", responder=echo)
    chain = Chain(
        name="served",
        steps=[
            qa_step("echo"),
            apply(lambda a: Note(note=a.answer[:5]), id="note", input_model=Answer, output_model=Note),
        ],
    )
    collect = Collect()
    broken_calls: list[str] = []

    def broken(event: Event) -> None:
        broken_calls.append(event.kind)
        raise RuntimeError("down")

    seen: list[Any] = []

    async def main() -> None:
        async with ChainService(chain, on_event=seen.append, middleware=[broken, collect]) as service:
            trace = await service.submit({"text": "hello there"}, trace_id="t-1")
            assert (await trace.result()).note == "re: h"

    anyio.run(main)
    traced = [e for e in collect.events if e.trace_id == "t-1"]
    # the trace's own events, as the service's on_event saw them, with wall-clock times
    assert [e.kind for e in traced if e.kind in {t.kind for t in seen}] == [t.kind for t in seen]
    assert [e.data for e in traced if e.kind in {t.kind for t in seen}] == [t.data for t in seen]
    assert all(abs(e.at - time.time()) < 60 for e in traced)
    # the runtime's events inside the trace are tagged with it; the engine's are not
    assert "node_progress" in [e.kind for e in traced]
    assert [e.trace_id for e in collect.events if e.kind == "engine_started"] == [None]
    # per-node detail: tokens spent and the engine
    finished = {e.data["node"]: e.data for e in traced if e.kind == "node_finished"}
    assert finished["qa"]["engine"] == "echo" and finished["qa"]["tokens"] > 0
    assert "engine" not in finished["note"] and finished["note"]["tokens"] == 0
    assert "failed" not in finished["qa"]
    assert len(broken_calls) == len(collect.events)  # a broken middleware never stopped the trace


def test_a_node_that_fails_the_trace_says_so_in_node_finished() -> None:
    def boom(a: Answer) -> Note:
        raise ValueError("no")

    register_engine("echo", backend="fake", responder=echo)
    chain = Chain(
        name="served",
        steps=[
            qa_step("echo"),
            apply(boom, id="boom"),
        ],
    )
    collect = Collect()

    async def main() -> None:
        async with ChainService(chain, middleware=[collect]) as service:
            trace = await service.submit({"text": "hello"}, trace_id="t-2")
            await trace.done.wait()

    anyio.run(main)
    finished = {e.data["node"]: e.data for e in collect.events if e.kind == "node_finished"}
    assert finished["boom"]["failed"] is True and "failed" not in finished["qa"]
    assert collect.kinds()[-1] == "failed" or "failed" in collect.kinds()
    assert [e.trace_id for e in collect.events if e.kind == "record_failed"] == ["t-2"]


# --- per-record events in a batch run -------------------------------------------------------


class SlowFirstCall(FakeEngine):
    """A fake back-end whose first ``generate`` call (of all instances) takes 5 s, an await a
    timeout cuts; the calls after it are answered at once."""

    calls: ClassVar[int] = 0

    async def generate(self, requests: Any) -> Any:
        SlowFirstCall.calls += 1
        if SlowFirstCall.calls == 1:
            await anyio.sleep(5)
        return await super().generate(requests)


class Wants(Collect):
    wants = frozenset(
        {"attempt", "retry", "timeout", "reask", "budget_exceeded", "node_started", "node_finished"}
    )


def test_a_timeout_then_success_is_seen_as_attempts_a_timeout_and_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKENDS, "slow_first", f"{__name__}:SlowFirstCall")
    monkeypatch.setattr(SlowFirstCall, "calls", 0)
    register_engine("slow_first", backend="slow_first")
    policy = NodePolicy(timeout_s=0.2, retries=1, backoff=Backoff(base_s=0.01, jitter=0.0))
    collect, everything = Wants(), Collect()
    chain = Chain("c", [qa_step("slow_first", policy=policy)])
    result = chain.run([Question(text="a")], tmp_path / "run", middleware=[collect, everything])

    assert result.counts["records_out"] == 1 and result.counts["failures"] == 0
    record = result.metadata["nodes"]["qa"]
    assert record["retries"] == 1
    mine = [e for e in collect.events if e.kind != "node_progress"]
    seen = [(e.kind, e.data.get("attempt"), e.data.get("outcome")) for e in mine if e.kind in Wants.wants]
    assert seen == [
        ("node_started", None, None),
        ("attempt", 1, "timeout"),
        ("timeout", 1, None),
        ("retry", 1, None),
        ("attempt", 2, "stop"),
        ("node_finished", None, None),
    ]
    by_kind = {e.kind: e.data for e in mine}
    rid = by_kind["node_started"]["record"]
    assert all(
        e.data["record"] == rid and e.data["index"] == 0 and e.data["node"] == "qa"
        for e in mine
        if e.kind in Wants.wants
    )
    assert by_kind["timeout"]["timeout_s"] == 0.2
    assert "timed out after 0.2 s" in by_kind["retry"]["error"] and by_kind["retry"]["delay_s"] == 0.01
    assert by_kind["node_finished"]["duration_s"] >= 0.2
    # a middleware that does not ask gets the rare ones, never the per-record node and attempt events
    kinds = set(everything.kinds())
    assert {"timeout", "retry"} <= kinds and not kinds & PER_RECORD


def test_an_invalid_then_valid_answer_is_seen_as_a_reask(tmp_path: Path) -> None:
    asked: list[str] = []

    def invalid_first(request: ChatRequest) -> Any:
        asked.append(request.messages[-1]["content"])
        return "not json" if len(asked) == 1 else {"answer": "fine", "confidence": 1.0}

    register_engine("fake", backend="fake", responder=invalid_first)
    collect = Wants()
    result = Chain("c", [qa_step("fake", max_reasks=1)]).run(
        [Question(text="a")], tmp_path / "run", middleware=[collect]
    )

    assert result.counts["records_out"] == 1
    [reask] = [e.data for e in collect.events if e.kind == "reask"]
    assert reask["node"] == "qa" and reask["attempt"] == 1 and reask["reask"] == 1 and reask["index"] == 0
    assert "not valid JSON" in reask["error"]
    outcomes = [e.data["outcome"] for e in collect.events if e.kind == "attempt"]
    assert outcomes == ["stop", "stop"]  # the engine answered twice: the first answer was invalid


def test_a_record_past_its_token_budget_is_told(tmp_path: Path) -> None:
    register_engine("fake", backend="fake")
    collect = Collect()
    chain = Chain(
        "c", [qa_step("fake"), apply(lambda a: a, id="keep", input_model=Answer, output_model=Answer)]
    )
    result = chain.run([Question(text="a")], tmp_path / "run", middleware=[collect], record_token_budget=1)
    assert result.counts["failures"] == 1
    [hit] = [e.data for e in collect.events if e.kind == "budget_exceeded"]
    assert hit["limit"] == "token_budget" and hit["index"] == 0
