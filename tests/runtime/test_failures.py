"""Failed records land in failures.jsonl with their reason; nothing is dropped or misaligned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import Answer, Question, Summary, Translation, read_jsonl

from chainette import Branch, Chain, ChatRequest, Completion, Step, register_engine


def qa(max_reasks: int = 2) -> Step:
    return Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="fake",
        user_prompt="Q: {{ text }}",
        max_reasks=max_reasks,
    )


def echo_answer(request: ChatRequest) -> Any:
    """Answers 'A:<text>' so every output can be traced back to its input."""
    text = next(m["content"] for m in request.messages if m["role"] == "user").removeprefix("Q: ")
    if text.startswith("bad"):
        return "this is not json"
    if text.startswith("boom"):
        raise ConnectionError("server went away")
    return {"answer": f"A:{text}", "confidence": 0.9}


def test_alignment_under_failures(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=echo_answer)
    texts = [f"ok{i}" if i % 3 else f"bad{i}" for i in range(30)] + ["boom"]
    result = Chain("c", [qa()]).run([Question(text=t) for t in texts], output_dir=run_dir)

    flat = read_jsonl(run_dir / "flattened")
    failures = read_jsonl(run_dir / "failures.jsonl")
    # every output row carries the answer computed from *its own* input
    assert all(r["qa.answer"] == "A:" + r["input.text"] for r in flat)
    # nothing lost: each input is either an output or a failure, exactly once
    assert sorted([r["input.text"] for r in flat] + [f["input"]["text"] for f in failures]) == sorted(texts)
    assert len({r["_id"] for r in flat} | {f["_id"] for f in failures}) == len(texts)
    assert result.counts == {"records_in": 31, "records_out": 20, "failures": 11, "filtered": 0}
    # step file rows agree with the flattened rows by id
    by_id = {r["_id"]: r for r in flat}
    assert all(by_id[row["_id"]]["qa.answer"] == row["answer"] for row in read_jsonl(run_dir / "qa"))


def test_invalid_output_is_reasked_then_lands_in_failures(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=echo_answer)
    Chain("c", [qa(max_reasks=2)]).run([Question(text="bad")], output_dir=run_dir)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["node"] == "qa" and failure["error_type"] == "invalid_output"
    assert failure["attempts"] == 3 and failure["raw"] == "this is not json"
    assert "not valid JSON" in failure["message"] and len(failure["details"]["errors"]) == 3
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["nodes"]["qa"]["requests"] == 3 and meta["nodes"]["qa"]["reasks"] == 2


def test_reask_feeds_the_error_back_and_recovers(run_dir: Path) -> None:
    conversations: list[list[dict[str, str]]] = []

    def first_wrong(request: ChatRequest) -> Any:
        conversations.append(list(request.messages))
        if len(request.messages) == 2:  # first attempt: confidence is not a number
            return {"answer": "x", "confidence": "very"}
        return {"answer": "fixed", "confidence": 0.1}

    register_engine("fake", backend="fake", responder=first_wrong)
    result = Chain("c", [qa()]).run([Question(text="q")], output_dir=run_dir)
    assert [r["qa.answer"] for r in result.flattened()] == ["fixed"]
    second = conversations[1]
    assert second[-2] == {"role": "assistant", "content": '{"answer": "x", "confidence": "very"}'}
    assert "field 'confidence'" in second[-1]["content"]


def test_truncated_output_is_reasked_not_kept(run_dir: Path) -> None:
    def always_cut(request: ChatRequest) -> Completion:
        return Completion(text='{"answer": "tru', finish_reason="length")

    register_engine("fake", backend="fake", responder=always_cut)
    Chain("c", [qa(max_reasks=1)]).run([Question(text="q")], output_dir=run_dir)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["attempts"] == 2 and "finish_reason='length'" in failure["message"]
    assert read_jsonl(run_dir / "flattened") == []


def test_engine_error_is_recorded_with_its_cause(run_dir: Path) -> None:
    register_engine("fake", backend="fake", responder=echo_answer)
    Chain("c", [qa()]).run([Question(text="boom"), Question(text="fine")], output_dir=run_dir)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert (
        failure["error_type"] == "engine_error" and "ConnectionError: server went away" in failure["message"]
    )
    assert [r["qa.answer"] for r in read_jsonl(run_dir / "flattened")] == ["A:fine"]


def test_runtime_template_error_fails_only_that_record(run_dir: Path) -> None:
    from pydantic import BaseModel

    class Maybe(BaseModel):
        text: str
        extra: Question | None = None

    register_engine("fake", backend="fake")
    step = Step(
        id="qa",
        input_model=Maybe,
        output_model=Answer,
        engine_name="fake",
        user_prompt="{{ text }} / {{ extra.text }}",
    )
    Chain("c", [step]).run([Maybe(text="a"), Maybe(text="b", extra=Question(text="x"))], output_dir=run_dir)
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["error_type"] == "render_error" and failure["input"]["text"] == "a"
    assert "Step 'qa'" in failure["message"] and "'None' has no attribute 'text'" in failure["message"]
    assert len(read_jsonl(run_dir / "flattened")) == 1


def test_failure_inside_joined_branch_fails_the_record_once(run_dir: Path) -> None:
    def responder(request: ChatRequest) -> Any:
        user = request.messages[-1]["content"]
        if user.startswith("Q: "):
            return {"answer": user[3:], "confidence": 1}
        if user == "FR: poison":
            return "nope"
        return {"translated": "t", "summary": "s"}

    register_engine("fake", backend="fake", responder=responder)
    tr = Step(
        id="tr",
        input_model=Answer,
        output_model=Translation,
        engine_name="fake",
        user_prompt="FR: {{ answer }}",
        max_reasks=0,
    )
    side = Step(id="side", input_model=Answer, output_model=Summary, engine_name="fake", user_prompt="side")
    agg = Step(
        id="agg",
        input_model=Answer,
        output_model=Summary,
        engine_name="fake",
        user_prompt="{{ fr.translated }}",
    )
    chain = Chain("c", [qa(), [Branch("fr", [tr]).join("fr"), Branch("side", [side])], agg])
    result = chain.run([Question(text="poison"), Question(text="fine")], output_dir=run_dir)

    failures = read_jsonl(run_dir / "failures.jsonl")
    assert [(f["node"], f["input"]["answer"]) for f in failures] == [("tr", "poison")]
    assert [r["input.text"] for r in result.flattened()] == ["fine"]
    # the unjoined side branch still ran for both records; its outputs are in its own folder
    assert len(read_jsonl(run_dir / "side")) == 2
    assert "side.summary" not in next(iter(result.flattened()))


def test_engine_raising_fails_the_batch_with_cause(run_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from chainette.engines import registry

    monkeypatch.setitem(registry.BACKENDS, "exploding", "tests.helpers:ExplodingEngine")
    register_engine("fake", backend="exploding")
    result = Chain("c", [qa()]).run([Question(text=f"q{i}") for i in range(3)], output_dir=run_dir)
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert result.counts["failures"] == 3 and result.counts["records_out"] == 0
    assert all("TimeoutError: no answer within 30 s" in f["message"] for f in failures)
    assert all(f["error_type"] == "engine_error" and f["attempts"] == 1 for f in failures)


def test_a_record_failing_in_two_joined_branches_is_one_failure(run_dir: Path) -> None:
    def translator(request: ChatRequest) -> Any:
        text = next(m["content"] for m in request.messages if m["role"] == "user")
        if "A:zap" in text:
            raise ConnectionError("server went away")
        return {"translated": text[:40]}

    register_engine("fake", backend="fake", responder=echo_answer)
    register_engine("tr", backend="fake", responder=translator)

    def branch(lang: str) -> Branch:
        step = Step(
            id=f"to_{lang}",
            input_model=Answer,
            output_model=Translation,
            engine_name="tr",
            user_prompt="{{ answer }}",
        )
        return Branch(lang, [step]).join(lang)

    texts = ["ok1", "zap", "ok2"]
    result = Chain("c", [qa(), [branch("fr"), branch("es")]]).run([Question(text=t) for t in texts], run_dir)
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert [f["input"]["answer"] for f in failures] == ["A:zap"]  # failed in both branches, written once
    assert result.counts == {"records_in": 3, "records_out": 2, "failures": 1, "filtered": 0}
    nodes = result.metadata["nodes"]
    assert nodes["to_fr"]["failed"] == nodes["to_es"]["failed"] == 1  # each node still counts its failure
