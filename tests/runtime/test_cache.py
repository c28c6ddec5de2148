"""The ledger in a run: duplicates sent once, reruns free, keys that move only with the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Answer, CountingEngine, Question, Summary, read_jsonl

from chainette import (
    Chain,
    ChatRequest,
    RunFolderError,
    SamplingParams,
    Step,
    apply,
    register_engine,
    set_price,
)
from chainette.engines.registry import BACKENDS


@pytest.fixture(autouse=True)
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingEngine]:
    monkeypatch.setitem(BACKENDS, "counting", "tests.helpers:CountingEngine")
    CountingEngine.sent = []
    return CountingEngine


def qa(sampling: SamplingParams | None = None, prompt: str = "Q: {{ text }}", **kw: Any) -> Step:
    return Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="eng",
        user_prompt=prompt,
        sampling=sampling,
        **kw,
    )


def summary(prompt: str = "Sum up: {{ answer }}") -> Step:
    return Step(id="summary", input_model=Answer, output_model=Summary, engine_name="eng", user_prompt=prompt)


def questions(n: int, distinct: int | None = None) -> list[Question]:
    return [Question(text=f"question {i % (distinct or n)}") for i in range(n)]


def rows(path: Path) -> list[dict[str, Any]]:
    return sorted(read_jsonl(path), key=lambda r: r["_id"])


def test_identical_requests_in_one_run_are_sent_once(tmp_path: Path) -> None:
    register_engine("eng", backend="counting")
    result = Chain("c", [qa()], batch_size=4).run(questions(40, distinct=5), tmp_path / "run")
    assert CountingEngine.sent == ["qa"] * 5  # 40 records, 5 distinct prompts, across 10 chunks
    assert result.counts["records_out"] == 40
    cache = result.metadata["cache"]
    # a duplicate waits for the identical request in flight, or finds its answer in the ledger
    assert cache["sent"] == 5 and cache["hits"] + cache["deduped"] == 35 and cache["mode"] == "use"
    CountingEngine.sent = []
    one_chunk = Chain("c", [qa()], batch_size=64).run(questions(40, distinct=5), tmp_path / "b", cache="off")
    assert (
        CountingEngine.sent == ["qa"] * 5 and one_chunk.metadata["cache"]["deduped"] == 35
    )  # no ledger at all
    by_text: dict[str, set[str]] = {}
    for row in read_jsonl(tmp_path / "run" / "flattened"):
        by_text.setdefault(row["input.text"], set()).add(row["qa.answer"])
    assert all(len(answers) == 1 for answers in by_text.values())  # duplicates share one answer


def test_rerun_sends_nothing_and_gives_identical_outputs(tmp_path: Path) -> None:
    register_engine("eng", backend="counting")
    chain = Chain("c", [qa(), summary()])
    first = chain.run(questions(12), tmp_path / "a")
    assert len(CountingEngine.sent) == 24
    CountingEngine.sent = []
    events: list[str] = []
    again = chain.run(questions(12), tmp_path / "b", on_event=lambda kind, data: events.append(kind))
    assert CountingEngine.sent == [] and "engine_started" not in events  # the engine never even starts
    assert again.metadata["cache"]["hits"] == 24 and again.metadata["cache"]["sent"] == 0
    for folder in ("qa", "summary", "flattened"):
        assert rows(first.path / folder) == rows(again.path / folder)


def test_throughput_knobs_hit_and_sampling_changes_miss(tmp_path: Path) -> None:
    register_engine("eng", backend="counting", max_batch_size=2, max_concurrency=1)
    Chain("c", [qa()], batch_size=3).run(questions(6), tmp_path / "a", workers=1)
    assert len(CountingEngine.sent) == 6
    # other batch size, workers, engine concurrency and batch: same requests, all from the ledger
    register_engine("eng", backend="counting", max_batch_size=16, max_concurrency=8)
    hit = Chain("c", [qa()], batch_size=64).run(questions(6), tmp_path / "b", workers=8)
    assert len(CountingEngine.sent) == 6 and hit.metadata["cache"]["hits"] == 6
    # a different temperature changes the answer: every request is sent again
    miss = Chain("c", [qa(SamplingParams(temperature=0.7))]).run(questions(6), tmp_path / "c")
    assert len(CountingEngine.sent) == 12 and miss.metadata["cache"]["hits"] == 0
    # so does another model
    register_engine("eng", backend="counting", model="other-model")
    Chain("c", [qa()]).run(questions(6), tmp_path / "d")
    assert len(CountingEngine.sent) == 18


def test_a_changed_step_invalidates_it_and_what_follows_only(tmp_path: Path) -> None:
    register_engine("eng", backend="counting")
    Chain("c", [qa(), summary()]).run(questions(5), tmp_path / "a")
    CountingEngine.sent = []
    Chain("c", [qa(), summary("Summarise in a few words: {{ answer }}")]).run(questions(5), tmp_path / "b")
    assert CountingEngine.sent == ["summary"] * 5  # qa came from the ledger
    CountingEngine.sent = []
    Chain("c", [qa(prompt="Question: {{ text }}"), summary()]).run(questions(5), tmp_path / "c")
    assert sorted(CountingEngine.sent) == ["qa"] * 5 + ["summary"] * 5


def test_samples_differ_at_temperature_and_reruns_reuse_them(tmp_path: Path) -> None:
    def by_seed(request: ChatRequest) -> dict[str, Any]:
        return {"answer": f"seed {request.sampling.seed}", "confidence": 0.5}

    register_engine("eng", backend="counting", responder=by_seed)
    step = qa(SamplingParams(temperature=0.8, seed=7), samples=3)
    first = Chain("c", [step]).run(questions(2), tmp_path / "a")
    out = rows(first.path / "qa")
    assert len(out) == 6 and len(CountingEngine.sent) == 6
    ids = [r["_id"] for r in out]
    assert all(i.rsplit(".", 1)[1] in {"0", "1", "2"} for i in ids) and len(set(ids)) == 6
    for prefix in {i.rsplit(".", 1)[0] for i in ids}:
        answers = {r["answer"] for r in out if r["_id"].startswith(prefix)}
        assert answers == {"seed 7", "seed 8", "seed 9"}  # distinct answers for the same prompt
    again = Chain("c", [step]).run(questions(2), tmp_path / "b")
    assert len(CountingEngine.sent) == 6 and again.metadata["cache"]["hits"] == 6
    assert rows(again.path / "qa") == out


def test_resume_replays_the_run_folder_and_sends_only_what_is_missing(tmp_path: Path) -> None:
    register_engine("eng", backend="counting")
    run = tmp_path / "run"
    Chain("c", [qa()]).run(questions(4), run)
    with pytest.raises(RunFolderError, match="--resume"):
        Chain("c", [qa()]).run(questions(4), run)
    CountingEngine.sent = []
    resumed = Chain("c", [qa()]).run(questions(6), run, resume=True)  # two more records than before
    assert CountingEngine.sent == ["qa", "qa"]
    assert resumed.counts["records_out"] == 6 and len(read_jsonl(run / "qa")) == 6  # nothing written twice
    assert resumed.metadata["resumed_from"]["status"] == "completed"
    with pytest.raises(RunFolderError, match="holds a run of chain 'c'"):
        Chain("other", [qa()]).run(questions(4), run, resume=True)


def test_cache_off_and_refresh(tmp_path: Path, ledger_path: Path) -> None:
    register_engine("eng", backend="counting")
    Chain("c", [qa()]).run(questions(3), tmp_path / "a", cache="off")
    assert not ledger_path.exists()  # off: not even created
    Chain("c", [qa()]).run(questions(3), tmp_path / "b")
    Chain("c", [qa()]).run(questions(3), tmp_path / "c", cache="refresh")
    assert len(CountingEngine.sent) == 9  # off, first use and refresh all send
    Chain("c", [qa()]).run(questions(3), tmp_path / "d", ledger=tmp_path / "elsewhere.sqlite")
    assert len(CountingEngine.sent) == 12 and (tmp_path / "elsewhere.sqlite").is_file()


def flaky(request: ChatRequest) -> Any:
    text = next(m["content"] for m in request.messages if m["role"] == "user")
    if "question 1" in text:
        raise ConnectionError("server went away")
    if "question 2" in text:
        return "not json"
    return {"answer": "fine", "confidence": 1.0}


@pytest.mark.parametrize("behaviour", ["retry", "stay"])
def test_failures_retry_or_stay_on_the_next_run(tmp_path: Path, behaviour: str) -> None:
    register_engine("eng", backend="counting", responder=flaky)
    chain = Chain("c", [qa(on_failure=behaviour, max_reasks=1)])
    first = chain.run(questions(3), tmp_path / "run")
    assert first.counts["failures"] == 2
    # question 1: one engine error; question 2: invalid, re-asked once
    assert sorted(CountingEngine.sent) == ["qa"] * 4
    CountingEngine.sent = []
    again = chain.run(questions(3), tmp_path / "run", resume=True)
    failures = {f["input"]["text"]: f for f in again.failures()}
    assert set(failures) == {"question 1", "question 2"} and again.counts["records_out"] == 1
    if behaviour == "retry":
        # the engine error is sent again (errors are never cached); the invalid answers replay from the ledger
        assert CountingEngine.sent == ["qa"] and again.metadata["cache"]["hits"] == 3
    else:
        assert CountingEngine.sent == [] and again.metadata["cache"]["hits"] == 1
        assert failures["question 1"]["error_type"] == "engine_error"
        assert (
            failures["question 2"]["error_type"] == "invalid_output"
            and failures["question 2"]["raw"] == "not json"
        )
        assert all(f["details"] == {"from_ledger": True} for f in failures.values())


def test_an_invalid_answer_gets_a_fresh_try_with_more_reasks_or_a_refresh(tmp_path: Path) -> None:
    """What the README promises for on_failure="retry": the replay fails the same way, these do not."""
    register_engine("eng", backend="counting", responder=flaky)
    Chain("c", [qa(max_reasks=1)]).run(questions(3)[2:], tmp_path / "first")  # question 2: 2 invalid answers
    CountingEngine.sent = []
    Chain("c", [qa(max_reasks=1)]).run(questions(3)[2:], tmp_path / "replay")
    assert CountingEngine.sent == []  # replayed from the ledger: nothing sent, same failure
    Chain("c", [qa(max_reasks=2)]).run(questions(3)[2:], tmp_path / "more")
    assert CountingEngine.sent == ["qa"]  # the 2 stored answers replay, the third ask is sent
    CountingEngine.sent = []
    Chain("c", [qa(max_reasks=1)]).run(questions(3)[2:], tmp_path / "fresh", cache="refresh")
    assert CountingEngine.sent == ["qa", "qa"]


def test_emit_passes_failed_records_on_marked(tmp_path: Path) -> None:
    register_engine("eng", backend="counting", responder=flaky)
    seen: list[Any] = []

    def after(value: Any) -> Any:
        seen.append(value)
        return value

    result = Chain("c", [qa(on_failure="emit", max_reasks=0), apply(after, input_model=None)]).run(
        questions(3), tmp_path / "run"
    )
    flat = {r["input.text"]: r for r in result.flattened()}
    assert len(flat) == 3 and result.counts["failures"] == 2
    assert flat["question 0"]["qa.answer"] == "fine"
    assert (
        "server went away" in flat["question 1"]["qa._error"]
        and "not valid JSON" in flat["question 2"]["qa._error"]
    )
    assert all(f["emitted"] is True for f in result.failures())
    assert sorted(r.get("_error", "") != "" for r in read_jsonl(tmp_path / "run" / "qa")) == [
        False,
        True,
        True,
    ]
    assert len(seen) == 3  # the apply after the step saw every record


def test_cost_per_step_and_engine_with_saved_tokens(tmp_path: Path) -> None:
    register_engine("eng", backend="counting", model="priced-model")
    set_price("priced-model", prompt=1_000_000.0, completion=2_000_000.0)  # $1 / $2 per token: easy sums
    first = Chain("c", [qa()]).run(questions(4, distinct=2), tmp_path / "a")
    nodes, cost = first.metadata["nodes"]["qa"], first.metadata["cost"]
    assert cost["by_step"]["qa"]["usd"] == nodes["prompt_tokens"] + 2 * nodes["completion_tokens"] > 0
    assert (
        cost["by_step"]["qa"]["saved_usd"]
        == nodes["saved_prompt_tokens"] + 2 * nodes["saved_completion_tokens"]
    )
    assert cost["by_engine"]["eng"]["usd"] == cost["usd"] and cost["by_step"]["qa"]["cached"] == 2
    again = Chain("c", [qa()]).run(questions(4, distinct=2), tmp_path / "b")
    assert (
        again.metadata["cost"]["usd"] == 0
        and again.metadata["cost"]["saved_usd"] == cost["usd"] + cost["saved_usd"]
    )
    register_engine("unpriced", backend="counting", model="nobody-knows")
    step = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="unpriced", user_prompt="{{ text }}"
    )
    unknown = Chain("c", [step]).run(questions(1), tmp_path / "c")
    assert unknown.metadata["cost"]["usd"] is None  # unknown price: no made-up number


def test_bad_cache_samples_and_on_failure_values_are_refused_before_any_request(tmp_path: Path) -> None:
    from chainette import ChainDefinitionError

    register_engine("eng", backend="counting")
    with pytest.raises(ValueError, match="cache must be one of 'use', 'refresh', 'off', got 'maybe'"):
        Chain("c", [qa()]).run(questions(1), tmp_path / "a", cache="maybe")
    with pytest.raises(ChainDefinitionError, match="on_failure must be one of 'retry', 'stay', 'emit'"):
        qa(on_failure="ignore")
    with pytest.raises(ChainDefinitionError, match="samples must be >= 1"):
        qa(samples=0)
    assert CountingEngine.sent == [] and not (tmp_path / "a").exists()


@pytest.mark.parametrize("system", ["Answer in one short sentence.", "Answer about {{ text }}."])
def test_ledger_keys_are_the_keys_of_the_requests_sent(
    tmp_path: Path, ledger_path: Path, system: str
) -> None:
    """Whether the system message is fixed (hashed once per chunk) or rendered per record, every
    stored key is ``request_key`` of the request the engine received."""
    from chainette.engines.base import ChatRequest
    from chainette.engines.registry import get_engine_config
    from chainette.ledger.keys import engine_identity, request_key
    from chainette.ledger.store import Ledger

    register_engine("eng", backend="counting")
    step = qa(system_prompt=system)
    Chain("c", [step]).run(questions(3), output_dir=tmp_path / "run")
    identity = engine_identity(get_engine_config("eng"))
    expected = set()
    for q in questions(3):
        content = system.replace("{{ text }}", q.text) + "\n\n" + step.schema_instruction
        messages = ({"role": "system", "content": content}, {"role": "user", "content": f"Q: {q.text}"})
        request = ChatRequest(messages=messages, json_schema=step.json_schema, sampling=step.sampling)
        expected.add(request_key(identity, request))
    with Ledger(ledger_path) as ledger:
        assert set(ledger.get(sorted(expected))) == expected
