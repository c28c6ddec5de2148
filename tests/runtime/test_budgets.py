"""A record's deadline and token budget across the whole chain (``record_deadline_s``,
``record_token_budget``): records past them fail with the reason, the others go on; loops end
(``on_budget="stop"``) or fail (``"fail"``) there."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Answer, Question, assert_every_record_accounted_for, qa_step, read_jsonl

from chainette import ChatRequest, Completion, Loop, Step, apply, register_engine
from chainette.engines import registry
from chainette.pipeline import Chain
from chainette.runtime.records import Record


def user_text(request: ChatRequest) -> str:
    return next(m["content"] for m in request.messages if m["role"] == "user")


def costing(tokens: Callable[[str], int], text: Callable[[str], str] | None = None) -> Callable[..., Any]:
    """A responder whose answer to prompt ``p`` costs ``tokens(p)`` completion tokens (5 prompt)."""

    def respond(request: ChatRequest) -> Completion:
        prompt = user_text(request)
        body = text(prompt) if text else json.dumps({"answer": prompt[:60], "confidence": 0.5})
        return Completion(text=body, finish_reason="stop", prompt_tokens=5, completion_tokens=tokens(prompt))

    return respond


def second_step(**options: Any) -> Step:
    return Step(
        id="again",
        input_model=Answer,
        output_model=Answer,
        engine_name="fake",
        user_prompt="{{ answer }}",
        **options,
    )


def test_record_fields_are_copied_with_the_record() -> None:
    record = Record("r", 0, 1, {"input": 1}, tokens=7, deadline=12.5, budget=100)
    for copy in (record.sample(1), record.child(0, "n", 2), record.fork()):
        assert (copy.deadline, copy.budget, copy.tokens) == (12.5, 100, 7)
    assert record.limited and not Record("r", 0, 1, {}).limited


def test_token_budget_fails_the_records_that_spent_it(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=costing(lambda p: 600 if "long" in p else 10))

    def mark(a: Answer) -> Answer:
        return a

    chain = Chain("c", [qa_step(), apply(mark), second_step()])
    chain.run(
        [Question(text=t) for t in ("short one", "long one", "short two")],
        output_dir=run_dir,
        record_token_budget=500,
    )
    flat, [failure] = assert_every_record_accounted_for(run_dir, 3)
    assert sorted(r["input.text"] for r in flat) == ["short one", "short two"]
    assert failure["error_type"] == "budget_exceeded" and failure["node"] == "mark"
    assert "token budget of 500 exceeded (605 used)" in failure["message"]
    assert "raise record_token_budget" in failure["message"]
    assert failure["details"] == {"limit": "token_budget", "budget": 500, "tokens": 605}


def test_token_budget_is_checked_before_a_reask(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=costing(lambda p: 300, text=lambda p: "not json"))
    Chain("c", [qa_step(max_reasks=3)]).run([Question(text="q")], output_dir=run_dir, record_token_budget=200)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["error_type"] == "budget_exceeded" and failure["node"] == "qa"
    assert failure["attempts"] == 1  # one answer, then no re-ask


def test_deadline_fails_records_before_they_are_sent(run_dir: Path) -> None:
    register_engine("fake", backend="fake")
    sent = []

    def slow(q: Question) -> Question:
        time.sleep(0.3)
        return q

    register_engine(
        "fake", backend="fake", responder=lambda r: sent.append(r) or {"answer": "a", "confidence": 1}
    )
    Chain("c", [apply(slow), qa_step()]).run(
        [Question(text="a"), Question(text="b")], output_dir=run_dir, record_deadline_s=0.2
    )
    _, failures = assert_every_record_accounted_for(run_dir, 2)
    # each record goes on its own: the first reaches qa past its deadline; the second's deadline
    # may pass while the first's sync function holds the loop, before its own call of ``slow``
    assert sent == [] and {f["node"] for f in failures} <= {"slow", "qa"} and failures[0]["node"] == "qa"
    assert all("deadline of 0.2 s passed" in f["message"] for f in failures)
    assert all(f["error_type"] == "budget_exceeded" for f in failures)


def test_deadline_cuts_the_call_in_flight_and_the_others_finish(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKENDS, "sleepy", "tests.helpers:SleepyEngine")
    register_engine("fake", backend="sleepy", seconds=3.0, max_batch_size=1)
    started = time.monotonic()
    Chain("c", [qa_step()]).run(
        [Question(text=t) for t in ("fast", "slow", "quick")], output_dir=run_dir, record_deadline_s=0.5
    )
    elapsed = time.monotonic() - started
    flat, [failure] = assert_every_record_accounted_for(run_dir, 3)
    assert sorted(r["input.text"] for r in flat) == ["fast", "quick"]
    assert failure["input"]["text"] == "slow" and failure["error_type"] == "budget_exceeded"
    assert "deadline of 0.5 s passed" in failure["message"]
    assert 0.5 <= elapsed < 2.5, elapsed


def test_bad_record_limits_are_refused(run_dir: Path) -> None:
    chain = Chain("c", [apply(lambda q: q, id="same", input_model=Question)])
    with pytest.raises(ValueError, match="record_deadline_s must be a number of seconds > 0"):
        chain.run([Question(text="a")], output_dir=run_dir, record_deadline_s=0)
    with pytest.raises(ValueError, match="record_token_budget must be an integer >= 1"):
        chain.run([Question(text="a")], output_dir=run_dir, record_token_budget=2.5)


# --- loops -----------------------------------------------------------------------------------


def refine(on_budget: Any, body: list[Any] | None = None) -> Loop:
    return Loop(
        "refine",
        body or [second_step()],
        max_iterations=10,
        on_budget=on_budget,
    )


def test_loop_stops_at_the_record_budget_by_default(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=costing(lambda p: 35))  # 40 tokens an answer
    chain = Chain("c", [qa_step(), refine("stop")])
    chain.run([Question(text="q")], output_dir=run_dir, record_token_budget=150)
    [row] = read_jsonl(run_dir / "flattened")
    # 40 (qa), then passes while under 150: 80, 120, 160
    assert row["refine.stop_reason"] == "max_tokens" and row["refine.iterations"] == 3
    assert read_jsonl(run_dir / "failures.jsonl") == []
    stops = json.loads((run_dir / "metadata.json").read_text())["nodes"]["refine"]["stop_reasons"]
    assert stops == {"max_tokens": 1}


def test_loop_on_budget_fail_fails_the_record(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=costing(lambda p: 35))
    Chain("c", [qa_step(), refine("fail")]).run(
        [Question(text="q")], output_dir=run_dir, record_token_budget=150
    )
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["node"] == "refine" and failure["error_type"] == "budget_exceeded"
    assert "token budget of 150 exceeded (160 used)" in failure["message"]
    assert read_jsonl(run_dir / "flattened") == []


def test_loop_stop_drops_a_pass_the_budget_cut_short(run_dir: Path) -> None:
    """Two steps a pass, 40 tokens each: pass 1's second step finds the budget spent; the loop
    ends with pass 0's value instead of failing the record."""
    register_engine("fake", backend="fake", responder=costing(lambda p: 35))
    body = [second_step(), Step(**{**_step_args(), "id": "polish"})]
    Chain("c", [qa_step(), refine("stop", body)]).run(
        [Question(text="q"), Question(text="r")], output_dir=run_dir, record_token_budget=150
    )
    flat, failures = assert_every_record_accounted_for(run_dir, 2)
    assert failures == []
    # qa 40, pass 0: 80, 120; pass 1: 160, then polish is refused: back to pass 0's outputs
    assert all(r["refine.stop_reason"] == "max_tokens" and r["refine.iterations"] == 1 for r in flat)
    assert all(r["refine.iteration"] == 0 for r in flat)


def _step_args() -> dict[str, Any]:
    return {
        "id": "x",
        "input_model": Answer,
        "output_model": Answer,
        "engine_name": "fake",
        "user_prompt": "{{ answer }}",
    }


def test_loop_stops_at_the_record_deadline(run_dir: Path) -> None:
    register_engine("fake", backend="fake")

    def slow(a: Answer) -> Answer:
        time.sleep(0.15)
        return a

    loop = Loop("refine", [apply(slow)], max_iterations=50)
    Chain("c", [qa_step(), loop]).run([Question(text="q")], output_dir=run_dir, record_deadline_s=0.5)
    [row] = read_jsonl(run_dir / "flattened")
    assert row["refine.stop_reason"] == "deadline" and 1 <= row["refine.iterations"] <= 4


def test_a_record_waiting_on_an_identical_request_is_cut_at_its_deadline(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKENDS, "sleepy", "tests.helpers:SleepyEngine")
    register_engine("fake", backend="sleepy", seconds=3.0, max_batch_size=1)
    started = time.monotonic()
    Chain("c", [qa_step()]).run(
        [Question(text="slow"), Question(text="slow")], output_dir=run_dir, record_deadline_s=0.4
    )
    assert time.monotonic() - started < 2.5
    _, failures = assert_every_record_accounted_for(run_dir, 2)
    assert [f["error_type"] for f in failures] == ["budget_exceeded"] * 2
    assert json.loads((run_dir / "metadata.json").read_text())["nodes"]["qa"]["deduped"] == 0
