"""Node policies (timeout, retries with backoff, validate) on the fake engine and Python functions."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from tests.helpers import (
    Answer,
    FlakyEngine,
    Question,
    assert_every_record_accounted_for,
    qa_step,
    read_jsonl,
)

from chainette import (
    Backoff,
    Chain,
    ChainDefinitionError,
    ChatRequest,
    Completion,
    NodePolicy,
    apply,
    register_engine,
)
from chainette.engines import registry

FAST = Backoff(base_s=0.01, multiplier=1.0, jitter=0.0)


class Text(BaseModel):
    text: str


def texts(*items: str) -> list[Question]:
    return [Question(text=t) for t in items]


def user_text(request: ChatRequest) -> str:
    return next(m["content"] for m in request.messages if m["role"] == "user")


def meta(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "metadata.json").read_text())
    return data


# --- the policy as a value -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (NodePolicy(timeout_s=0), "timeout_s must be a number of seconds > 0"),
        (NodePolicy(timeout_s=-1.5), "got -1.5"),
        (NodePolicy(retries=-1), "retries must be an integer >= 0"),
        (NodePolicy(retries=1.5), "retries must be an integer"),  # type: ignore[arg-type]
        (NodePolicy(backoff=Backoff(multiplier=0.5)), "backoff multiplier must be a number >= 1"),
        (NodePolicy(backoff=Backoff(jitter=1.0)), "backoff jitter must be a number in [0, 1)"),
        (NodePolicy(backoff=Backoff(base_s=-1)), "backoff base_s must be a number >= 0"),
        (NodePolicy(validate="inputs"), "validate must be one of 'both', 'input', 'output', 'none'"),  # type: ignore[arg-type]
        ("fast", "policy must be a NodePolicy"),
    ],
)
def test_bad_policies_are_refused_naming_the_node(policy: Any, problem: str) -> None:
    with pytest.raises(ChainDefinitionError, match="Step 'qa'") as step_error:
        qa_step(policy=policy)
    assert problem in str(step_error.value)

    def clean(t: Text) -> Text:
        return t

    with pytest.raises(ChainDefinitionError, match="apply 'clean'") as apply_error:
        apply(clean, policy=policy)
    assert problem in str(apply_error.value)


def test_backoff_grows_to_its_cap_with_repeatable_jitter() -> None:
    exact = Backoff(base_s=1.0, multiplier=2.0, cap_s=5.0, jitter=0.0)
    assert [exact.delay(k) for k in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = Backoff(base_s=1.0, multiplier=2.0, cap_s=30.0, jitter=0.1)
    waits = [jittered.delay(2, f"qa/record{i}") for i in range(50)]
    assert all(1.8 <= w <= 2.2 for w in waits) and len(set(waits)) > 40  # spread, within ±10 %
    assert waits == [jittered.delay(2, f"qa/record{i}") for i in range(50)]  # a rerun waits the same


def test_policy_goes_into_graph_json(run_dir: Path) -> None:
    register_engine("fake", backend="fake")
    policy = NodePolicy(timeout_s=2.5, retries=3, backoff=Backoff(base_s=0.2), validate="output")

    def keep(a: Answer) -> Answer:
        return a

    Chain("c", [qa_step(policy=policy), apply(keep)]).run(texts("q"), output_dir=run_dir)
    nodes = {n["id"]: n for n in json.loads((run_dir / "graph.json").read_text())["nodes"]}
    assert nodes["qa"]["policy"] == {
        "timeout_s": 2.5,
        "retries": 3,
        "backoff": {"base_s": 0.2, "multiplier": 2.0, "cap_s": 30.0, "jitter": 0.1},
        "validate": "output",
    }
    assert "policy" not in nodes["keep"]


# --- apply -----------------------------------------------------------------------------------


def test_apply_timeout_fails_the_slow_record_and_leaves_the_others(run_dir: Path) -> None:
    def maybe_slow(t: Text) -> Text:
        if t.text == "slow":
            time.sleep(1.5)
        return Text(text=t.text.upper())

    node = apply(maybe_slow, policy=NodePolicy(timeout_s=0.2))
    started = time.monotonic()
    Chain("c", [node]).run([Text(text=t) for t in ("a", "slow", "b")], output_dir=run_dir)
    elapsed = time.monotonic() - started

    flat, [failure] = assert_every_record_accounted_for(run_dir, 3)
    assert sorted(r["maybe_slow.text"] for r in flat) == ["A", "B"]
    assert failure["node"] == "maybe_slow" and failure["error_type"] == "apply_error"
    assert "timed out after 0.2 s" in failure["message"] and failure["attempts"] == 1
    assert elapsed < 1.2, f"the run waited for the abandoned call ({elapsed:.2f} s)"


def test_async_apply_timeout_is_retried_then_fails(run_dir: Path) -> None:
    import anyio

    calls: Counter[str] = Counter()

    async def fetch(t: Text) -> Text:
        calls[t.text] += 1
        if t.text == "slow":
            await anyio.sleep(5)
        return t

    node = apply(fetch, policy=NodePolicy(timeout_s=0.1, retries=2, backoff=FAST))
    Chain("c", [node]).run([Text(text="slow"), Text(text="ok")], output_dir=run_dir)
    _, [failure] = assert_every_record_accounted_for(run_dir, 2)
    assert calls == {"slow": 3, "ok": 1}
    assert failure["attempts"] == 3
    assert "failed after 3 attempts" in failure["message"] and "timed out after 0.1 s" in failure["message"]


def test_apply_retries_wait_the_backoff_between_attempts(run_dir: Path) -> None:
    stamps: list[float] = []

    def flaky(t: Text) -> Text:
        stamps.append(time.monotonic())
        if len(stamps) < 3:
            raise ConnectionError("try again")
        return t

    backoff = Backoff(base_s=0.05, multiplier=2.0, jitter=0.0)
    Chain("c", [apply(flaky, policy=NodePolicy(retries=2, backoff=backoff))]).run(
        [Text(text="x")], output_dir=run_dir
    )
    assert_every_record_accounted_for(run_dir, 1)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 2
    assert 0.05 <= gaps[0] < 0.05 + 0.15 and 0.1 <= gaps[1] < 0.1 + 0.15, gaps


def test_a_chunks_backoffs_overlap(run_dir: Path) -> None:
    """Ten records failing once each wait about one backoff together, not ten in a row."""
    seen: set[str] = set()

    def once(t: Text) -> Text:
        if t.text not in seen:
            seen.add(t.text)
            raise ValueError("first call fails")
        return t

    node = apply(once, policy=NodePolicy(retries=1, backoff=Backoff(base_s=0.3, jitter=0.0)))
    started = time.monotonic()
    Chain("c", [node]).run([Text(text=f"t{i}") for i in range(10)], output_dir=run_dir)
    elapsed = time.monotonic() - started
    assert_every_record_accounted_for(run_dir, 10)
    assert len(read_jsonl(run_dir / "failures.jsonl")) == 0
    assert 0.3 <= elapsed < 1.5, elapsed


def test_apply_exhausted_retries_land_in_failures_with_the_last_error(run_dir: Path) -> None:
    calls = []

    def broken(t: Text) -> Text:
        calls.append(t.text)
        raise ValueError(f"bad value {len(calls)}")

    node = apply(broken, policy=NodePolicy(retries=2, backoff=FAST))
    Chain("c", [node]).run([Text(text="x")], output_dir=run_dir)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert len(calls) == 3 and failure["attempts"] == 3
    assert failure["node"] == "broken" and failure["error_type"] == "apply_error"
    assert "apply 'broken' failed after 3 attempts" in failure["message"]
    assert "ValueError: bad value 3" in failure["message"]  # the last error, not the first


def test_apply_retries_are_counted_in_metadata_as_a_steps_are(run_dir: Path) -> None:
    """Issue 27: an apply failing once then succeeding was called twice but counted 0 retries."""
    calls: list[str] = []

    def flaky(t: Text) -> Text:
        calls.append(t.text)
        if len(calls) == 1:
            raise ConnectionError("try again")
        return t

    events: list[str] = []
    node = apply(flaky, policy=NodePolicy(retries=2, backoff=FAST))
    Chain("c", [node]).run(
        [Text(text="x")], output_dir=run_dir, on_event=lambda kind, data: events.append(kind)
    )
    assert len(calls) == 2
    assert meta(run_dir)["nodes"]["flaky"]["retries"] == 1
    assert events.count("retry") == 1  # the progress display counts retries from these


class Loose(BaseModel):
    text: str
    n: int


@pytest.mark.parametrize(
    ("validate", "fails_in", "out_type"),
    [("both", True, None), ("input", True, None), ("output", False, "Loose"), ("none", False, "dict")],
)
def test_apply_validate_chooses_what_is_fitted(
    run_dir: Path, validate: Any, fails_in: bool, out_type: str | None
) -> None:
    seen: list[str] = []

    def look(value: Loose) -> Any:
        seen.append(type(value).__name__)
        return {"text": "out", "n": "7"}  # "7": a string the model would coerce to 7

    node = apply(look, input_model=Loose, output_model=Loose, policy=NodePolicy(validate=validate))
    Chain("c", [apply(lambda t: {"text": t.text}, id="strip", input_model=Text), node]).run(
        [Text(text="x")], output_dir=run_dir
    )
    failures = read_jsonl(run_dir / "failures.jsonl")
    if fails_in:  # {"text": "x"} lacks n: validating the way in fails it before the call
        assert seen == [] and failures[0]["message"].startswith("apply 'look': input does not fit Loose")
        return
    assert seen == ["dict"] and failures == []
    [row] = read_jsonl(run_dir / "flattened")
    assert row["look.n"] == (7 if out_type == "Loose" else "7")


# --- step ------------------------------------------------------------------------------------


def failing_first(n: int, answer: Callable[[ChatRequest], Any] | None = None) -> Callable[[ChatRequest], Any]:
    """A responder that fails the first ``n`` requests of each prompt with an error answer."""
    seen: Counter[str] = Counter()

    def respond(request: ChatRequest) -> Any:
        text = user_text(request)
        seen[text] += 1
        if seen[text] <= n:
            return Completion(text="HTTP 503 from the server: overloaded", finish_reason="error")
        return answer(request) if answer else {"answer": f"A:{text}", "confidence": 0.5}

    respond.seen = seen  # type: ignore[attr-defined]
    return respond


def test_step_engine_errors_are_retried_and_not_counted_as_reasks(run_dir: Path) -> None:
    responder = failing_first(2)
    register_engine("fake", backend="fake", responder=responder)
    policy = NodePolicy(retries=2, backoff=FAST)
    Chain("c", [qa_step(policy=policy, max_reasks=0)]).run(texts("a", "b"), output_dir=run_dir)
    flat, failures = assert_every_record_accounted_for(run_dir, 2)
    assert failures == [] and sorted(r["qa.answer"] for r in flat) == ["A:a", "A:b"]
    assert responder.seen == {"a": 3, "b": 3}  # type: ignore[attr-defined]
    node = meta(run_dir)["nodes"]["qa"]
    assert node["retries"] == 4 and node["reasks"] == 0


def test_step_without_policy_does_not_retry_engine_errors(run_dir: Path) -> None:
    responder = failing_first(1)
    register_engine("fake", backend="fake", responder=responder)
    Chain("c", [qa_step(max_reasks=3)]).run(texts("a"), output_dir=run_dir)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["error_type"] == "engine_error" and responder.seen == {"a": 1}  # type: ignore[attr-defined]


def test_step_raising_engine_is_retried_with_backoff(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "flaky", "tests.helpers:FlakyEngine")
    monkeypatch.setattr(FlakyEngine, "raise_first", 2)
    monkeypatch.setattr(FlakyEngine, "call_times", [])
    register_engine("flaky", backend="flaky")
    policy = NodePolicy(retries=2, backoff=Backoff(base_s=0.05, multiplier=2.0, jitter=0.0))
    Chain("c", [qa_step("flaky", policy=policy)]).run(texts("a"), output_dir=run_dir)
    assert_every_record_accounted_for(run_dir, 1)
    assert read_jsonl(run_dir / "failures.jsonl") == []
    stamps = FlakyEngine.call_times
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(stamps) == 3 and gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps


def test_step_exhausted_retries_fail_naming_attempts_and_last_error(run_dir: Path) -> None:
    responder = failing_first(99)
    register_engine("fake", backend="fake", responder=responder)
    Chain("c", [qa_step(policy=NodePolicy(retries=2, backoff=FAST))]).run(texts("a"), output_dir=run_dir)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["error_type"] == "engine_error" and failure["node"] == "qa"
    assert failure["attempts"] == 3 and responder.seen == {"a": 3}  # type: ignore[attr-defined]
    assert "Step 'qa': engine 'fake' failed after 3 attempts" in failure["message"]
    assert "last error: HTTP 503 from the server: overloaded" in failure["message"]


def test_invalid_answers_are_reasked_under_max_reasks_whatever_the_retries(run_dir: Path) -> None:
    count: Counter[str] = Counter()

    def invalid_twice(request: ChatRequest) -> Any:
        count[user_text(request)] += 1
        if count[user_text(request)] <= 2:
            return "not json at all"
        return {"answer": "fine", "confidence": 0.5}

    register_engine("fake", backend="fake", responder=invalid_twice)
    policy = NodePolicy(retries=5, backoff=FAST)
    Chain("c", [qa_step(policy=policy, max_reasks=2)]).run(texts("a"), output_dir=run_dir / "two")
    assert read_jsonl(run_dir / "two" / "failures.jsonl") == []
    node = meta(run_dir / "two")["nodes"]["qa"]
    assert node["reasks"] == 2 and node["retries"] == 0

    count.clear()  # one re-ask allowed: retries do not stretch it
    Chain("c", [qa_step(policy=policy, max_reasks=1)]).run(
        texts("a"), output_dir=run_dir / "one", cache="off"
    )
    [failure] = read_jsonl(run_dir / "one" / "failures.jsonl")
    assert failure["error_type"] == "invalid_output" and failure["attempts"] == 2 and count["a"] == 2


def test_a_retry_goes_through_the_ledger_and_the_one_send_per_request(run_dir: Path) -> None:
    responder = failing_first(1)
    register_engine("fake", backend="fake", responder=responder)
    chain = Chain("c", [qa_step(policy=NodePolicy(retries=1, backoff=FAST))])
    chain.run(texts("same", "same", "other"), output_dir=run_dir / "first")
    assert read_jsonl(run_dir / "first" / "failures.jsonl") == []
    # two identical records: one request per attempt (the error was not stored, so the retry sent)
    assert responder.seen == {"same": 2, "other": 2}  # type: ignore[attr-defined]
    chain.run(texts("same", "other"), output_dir=run_dir / "again")
    assert responder.seen == {"same": 2, "other": 2}  # type: ignore[attr-defined]  # answered by the ledger
    assert meta(run_dir / "again")["nodes"]["qa"]["cache_hits"] == 2


def test_step_timeout_cuts_the_call_and_retries_it(run_dir: Path) -> None:
    register_engine("slow", backend="fake", latency=2.0)
    policy = NodePolicy(timeout_s=0.1, retries=1, backoff=FAST)
    started = time.monotonic()
    Chain("c", [qa_step("slow", policy=policy)]).run(texts("a"), output_dir=run_dir)
    assert time.monotonic() - started < 1.5
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["error_type"] == "engine_error" and failure["attempts"] == 2
    assert "after 2 attempts" in failure["message"] and "timed out after 0.1 s" in failure["message"]
    assert meta(run_dir)["nodes"]["qa"]["retries"] == 1


def test_step_validate_none_skips_fitting_the_input(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=lambda r: {"answer": user_text(r), "confidence": 1})

    def loose(t: Text) -> dict[str, Any]:
        return {"text": 123}  # Question.text is a string: it does not fit

    for validate, fails in (("both", True), ("input", True), ("output", False), ("none", False)):
        out = run_dir / validate
        step = qa_step(policy=NodePolicy(validate=validate))  # type: ignore[arg-type]
        Chain("c", [apply(loose), step]).run([Text(text="x")], output_dir=out)
        failures = read_jsonl(out / "failures.jsonl")
        if fails:
            assert failures[0]["error_type"] == "render_error", failures
        else:
            assert failures == [] and read_jsonl(out / "flattened")[0]["qa.answer"] == "123"


def test_apply_retries_stop_at_the_records_deadline(run_dir: Path) -> None:
    calls = []

    def broken(t: Text) -> Text:
        calls.append(t.text)
        raise ValueError("down")

    node = apply(broken, policy=NodePolicy(retries=5, backoff=Backoff(base_s=0.3, jitter=0.0)))
    Chain("c", [node]).run([Text(text="x")], output_dir=run_dir, record_deadline_s=0.5)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    # tries at 0, 0.3 s; the third would start at 0.9 s, past the deadline
    assert len(calls) == 2 and failure["attempts"] == 2
    assert failure["error_type"] == "budget_exceeded" and "deadline of 0.5 s passed" in failure["message"]
