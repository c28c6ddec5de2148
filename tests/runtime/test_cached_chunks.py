"""A chunk's ledger answers settled together (``runtime/step_cached.py``, ``stages._ahead``): the
records the ledger answers go through a step in their chunk, with no task of their own; only the
records left waiting (a miss, a re-ask) become tasks, and none of them holds back a settled one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Answer, CountingEngine, Question, Summary, read_jsonl

from chainette import Chain, ChatRequest, Step, apply, register_engine
from chainette.engines.registry import BACKENDS


@pytest.fixture(autouse=True)
def counting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "counting", "tests.helpers:CountingEngine")
    CountingEngine.sent = []


def answer(request: ChatRequest) -> Any:
    text = next(m["content"] for m in request.messages if m["role"] == "user")
    if "question 1:" in text:
        raise ConnectionError("server went away")
    if "question 2:" in text:
        return "not json"
    if text.startswith("Sum up"):
        return {"summary": f"sum of {text[-30:]}"}
    return {"answer": f"about {text[-40:]}", "confidence": 0.5}


def slow_if(word: str, seconds: float) -> Any:
    return lambda request: seconds if word in request.messages[-1]["content"] else 0.0


def shout(a: Answer) -> Answer:  # a sync apply between the steps: runs in the chunk too
    return Answer(answer=a.answer.upper(), confidence=a.confidence)


def chain(**kw: Any) -> Chain:
    qa = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="eng",
        user_prompt="Q: {{ text }}",
        on_failure="stay",
        max_reasks=1,
    )
    summary = Step(
        id="summary",
        input_model=Answer,
        output_model=Summary,
        engine_name="eng",
        user_prompt="Sum up: {{ answer }}",
    )
    return Chain("c", [qa, apply(shout, id="shout", write=True), summary], **kw)


def questions(texts: list[str]) -> list[Question]:
    return [Question(text=t) for t in texts]


def failures_of(path: Path) -> list[tuple[Any, ...]]:
    return sorted(
        (f["_index"], f["node"], f["error_type"], f["raw"], f["message"])
        for f in read_jsonl(path / "failures.jsonl")
    )


@pytest.mark.parametrize("ordered", [True, False])
def test_a_cached_rerun_sends_nothing_starts_no_record_task_and_writes_the_same(
    tmp_path: Path, ordered: bool
) -> None:
    register_engine("eng", backend="counting", responder=answer, max_batch_size=8)
    texts = [f"question {i}: what is {i}?" for i in range(150)]  # 3 chunks; 1: an engine error, 2: invalid
    first = chain(batch_size=64).run(questions(texts), tmp_path / "first", ordered=ordered)
    assert first.counts["failures"] == 2 and first.metadata["in_flight"]["peak"] > 0
    CountingEngine.sent = []
    again = chain(batch_size=64).run(questions(texts), tmp_path / "again", ordered=ordered)
    assert CountingEngine.sent == [] and again.metadata["cache"]["sent"] == 0
    assert again.metadata["in_flight"]["peak"] == 0  # every record settled in its chunk: none had a task
    for folder in ("flattened", "qa", "shout", "summary"):
        before, after = read_jsonl(tmp_path / "first" / folder), read_jsonl(tmp_path / "again" / folder)
        if ordered:
            assert after == before and [r["_index"] for r in after] == sorted(r["_index"] for r in after)
        else:
            assert sorted(after, key=lambda r: r["_index"]) == sorted(before, key=lambda r: r["_index"])
    assert failures_of(tmp_path / "again") == failures_of(tmp_path / "first")
    assert again.counts == first.counts
    assert again.metadata["nodes"]["qa"] == {**first.metadata["nodes"]["qa"], **_cached(again, "qa")}


def _cached(result: Any, node: str) -> dict[str, Any]:
    """The counters that differ between a sending run and its cached rerun (a stayed failure
    replays without its re-asks)."""
    stats = result.metadata["nodes"][node]
    return {
        k: stats[k] for k in stats if "tokens" in k or k in ("requests", "cache_hits", "deduped", "reasks")
    }


def test_cached_records_are_written_before_the_slow_requests_of_their_chunk_finish(tmp_path: Path) -> None:
    register_engine("eng", backend="counting", responder=answer)
    cached = [f"cached {i}" for i in range(8)]
    chain(batch_size=64).run(questions(cached), tmp_path / "first")
    register_engine("eng", backend="counting", responder=answer, latency=slow_if("new", 0.5))
    CountingEngine.sent = []
    texts = ["new a", *cached[:4], "new b", *cached[4:]]  # one chunk, the misses first and in the middle
    result = chain(batch_size=64).run(questions(texts), tmp_path / "mixed", ordered=False)
    rows = read_jsonl(tmp_path / "mixed" / "flattened")
    # the cached ones landed first, while the new ones' requests were out (rows in completion order)
    assert [r["input.text"] for r in rows[:8]] == cached and {r["input.text"] for r in rows[8:]} == {
        "new a",
        "new b",
    }
    assert [r["_index"] for r in rows[:8]] == [1, 2, 3, 4, 6, 7, 8, 9]
    assert sorted(CountingEngine.sent) == ["qa", "qa", "summary", "summary"]
    assert result.metadata["in_flight"]["peak"] == 2  # only the misses had tasks of their own
    assert result.metadata["nodes"]["qa"]["cache_hits"] == 8


def test_a_mixed_chunk_keeps_input_order_in_every_folder_when_ordered(tmp_path: Path) -> None:
    register_engine("eng", backend="counting", responder=answer)
    cached = [f"cached {i}" for i in range(10)]
    chain(batch_size=8).run(questions(cached), tmp_path / "first")
    register_engine("eng", backend="counting", responder=answer, latency=slow_if("new", 0.3))
    CountingEngine.sent = []
    texts = [t for pair in zip(cached, (f"new {i}" for i in range(10)), strict=True) for t in pair]
    texts += ["question 1: boom", "question 2: bad"]  # an engine error, an invalid answer re-asked
    result = chain(batch_size=8).run(questions(texts), tmp_path / "mixed")
    for folder in ("flattened", "qa", "shout"):
        rows = read_jsonl(tmp_path / "mixed" / folder)
        assert [r["_index"] for r in rows] == list(range(20)), folder
    flat = read_jsonl(tmp_path / "mixed" / "flattened")
    assert [r["input.text"] for r in flat] == texts[:20]
    assert [r["summary.summary"] for r in flat[::2]] == [
        r["summary.summary"] for r in read_jsonl(tmp_path / "first" / "flattened")
    ]
    assert sorted(CountingEngine.sent).count("qa") == 10 + 1 + 2 and result.counts["failures"] == 2
    assert [f[:4] for f in failures_of(tmp_path / "mixed")] == [
        (20, "qa", "engine_error", None),
        (21, "qa", "invalid_output", "not json"),
    ]


def test_a_chunk_larger_than_the_reorder_window_goes_through(tmp_path: Path) -> None:
    # max_in_flight=1: a window of 17 places, chunks of 64; cached and new records mixed
    register_engine("eng", backend="counting", responder=answer)
    cached = [f"cached {i}" for i in range(100)]
    chain(batch_size=64).run(questions(cached), tmp_path / "first")
    texts = [t if i % 10 else f"new {i}" for i, t in enumerate(cached)]
    result = chain(batch_size=64).run(questions(texts), tmp_path / "mixed", max_in_flight=1)
    assert [r["input.text"] for r in result.flattened()] == texts
    assert [r["_index"] for r in read_jsonl(tmp_path / "mixed" / "qa")] == list(range(100))
