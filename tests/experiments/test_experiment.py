"""An experiment end to end on the fake engine: config, run folder, assessments, experiment.json."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from tests.experiments.shared import CalcConfig, Problem, Result, build_chain, write_jsonl

from chainette import (
    Chain,
    Experiment,
    ExperimentError,
    SamplingParams,
    Step,
    apply,
    exact,
    llm_judge,
    numeric,
    register_engine,
)
from chainette.engines.base import ChatRequest

REPO = Path(__file__).resolve().parents[2]

CASES = [
    {"id": "add", "input": {"question": "2 + 3"}, "expected": {"answer": 5}},
    {"id": "mul", "input": {"question": "wrong 4 * 5"}, "expected": {"answer": 20}},
    {"id": "boom", "input": {"question": "boom 1 + 1"}, "expected": {"answer": 2}},
]


def calc_experiment(tmp_path: Path, **kwargs: Any) -> Experiment:
    suite = write_jsonl(tmp_path / "cases.jsonl", CASES)
    return Experiment("calc", build_chain, suite, [numeric("answer")], CalcConfig, **kwargs)


def test_cases_pass_fail_or_error_and_a_chain_failure_is_an_error(calc_engine: str, tmp_path: Path) -> None:
    result = calc_experiment(tmp_path).run(tmp_path / "run", ["engine=calc"])
    assert [(c.id, c.status) for c in result.cases] == [("add", "pass"), ("mul", "fail"), ("boom", "error")]
    assert result.case("add").output == {"answer": 5.0}
    mul = result.case("mul")
    assert mul.reason == "got 21, expected 20 (off by 1)" and mul.score == 0.0
    assert mul.assessments["numeric(answer)"].metric == 1.0
    boom = result.case("boom")
    assert boom.error is not None and boom.error["node"] == "solve"
    assert "the engine exploded" in boom.error["message"] and boom.reason.startswith("solve: ")
    assert boom.assessments == {}  # never assessed: not a wrong answer
    assert result.pass_rate == round(1 / 3, 4)


def test_experiment_json_holds_config_git_suite_cases_and_totals(
    calc_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # git info comes from the current folder's work tree
    monkeypatch.setattr("sys.argv", ["chainette", "experiment", "run", "x.py:calc"])
    result = calc_experiment(tmp_path).run(tmp_path / "run", ["engine=calc", "sampling.temperature=0.1"])
    data = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert data == result.data | {"git": data["git"]}
    assert data["command"] == ["chainette", "experiment", "run", "x.py:calc"]
    assert data["config"] == {
        "engine": "calc",
        "sampling": {"temperature": 0.1, "max_tokens": 32},
        "tags": [],
    }
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert data["git"]["commit"] == head.strip() and isinstance(data["git"]["dirty"], bool)
    assert data["suite"]["path"].endswith("cases.jsonl") and len(data["suite"]["sha256"]) == 64
    assert data["versions"]["chainette"] and data["run"]["status"] == "completed"
    totals = data["totals"]
    assert (totals["cases"], totals["pass"], totals["fail"], totals["error"]) == (3, 1, 1, 1)
    assert totals["pass_rate"] == 0.3333 and totals["tokens"]["prompt"] > 0
    assert totals["cost"]["by_step"]["solve"]["requests"] == 3 and totals["cache"]["sent"] == 3
    add = data["cases"][0]
    assert add["id"] == "add" and add["status"] == "pass" and add["expected"] == {"answer": 5}
    assert add["assessments"]["numeric(answer)"]["passed"] is True
    flattened = [
        json.loads(line) for line in (tmp_path / "run" / "flattened" / "000.jsonl").read_text().splitlines()
    ]
    assert add["record_id"] == flattened[0]["_id"]  # results join back to the run folder's rows


def test_the_stored_config_leaves_internal_fields_out(calc_engine: str, tmp_path: Path) -> None:
    from typing import Annotated

    from chainette import Internal

    class Config(CalcConfig):
        template_text: Annotated[str, Internal()] = "secret prompt text"

    result = Experiment("calc", build_chain, CASES[:1], [numeric("answer")], Config).run(
        tmp_path / "run", ["engine=calc"]
    )
    assert result.config is not None and "template_text" not in result.config
    assert "secret prompt text" not in (tmp_path / "run" / "experiment.json").read_text()


def test_the_chain_is_built_for_the_merged_config(calc_engine: str, tmp_path: Path) -> None:
    seen: list[CalcConfig] = []

    def factory(config: CalcConfig) -> Chain:
        seen.append(config)
        return build_chain(config)

    Experiment("calc", factory, CASES[:1], [], CalcConfig).run(
        tmp_path / "run", ["engine=calc", "sampling.max_tokens=7"]
    )
    assert seen[0].sampling.max_tokens == 7
    graph = json.loads((tmp_path / "run" / "graph.json").read_text())
    assert '"max_tokens": 7' in json.dumps(graph)


def test_a_missing_required_field_is_refused_before_anything_runs(calc_engine: str, tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match=r"engine \(engine name\)"):
        calc_experiment(tmp_path).run(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_case_that_does_not_fit_the_chain_is_refused_before_the_run(
    calc_engine: str, tmp_path: Path
) -> None:
    bad = [{"id": "x", "input": {"text": "2 + 2"}, "expected": 4}]
    with pytest.raises(ExperimentError, match=r"case 'x'.*field 'question'"):
        Experiment("calc", build_chain, bad, [], CalcConfig).run(tmp_path / "run", ["engine=calc"])
    assert not (tmp_path / "run").exists()


def test_a_rerun_with_overwrite_replaces_the_experiment_folder(calc_engine: str, tmp_path: Path) -> None:
    experiment = calc_experiment(tmp_path)
    experiment.run(tmp_path / "run", ["engine=calc"])
    again = experiment.run(tmp_path / "run", ["engine=calc"], overwrite=True)
    assert again.totals["pass"] == 1 and again.totals["cache"]["hits"] == 2  # answers from the ledger


class Chat(BaseModel):
    text: str
    history: list[dict[str, Any]] = []


class Reply(BaseModel):
    reply: str


def test_a_multi_turn_case_gives_each_turn_the_conversation_so_far(tmp_path: Path) -> None:
    def responder(request: ChatRequest) -> dict[str, str]:
        text = request.messages[-1]["content"]
        said = re.findall(r"'text': '(\w+)'", text)
        return {"reply": "+".join([*said, re.search(r"now: (\w+)", text).group(1)])}  # type: ignore[union-attr]

    register_engine("echo", backend="fake", responder=responder)
    step = Step(
        id="talk", input_model=Chat, output_model=Reply, engine_name="echo",
        user_prompt="before: {{ history }} now: {{ text }}",
    )  # fmt: skip
    cases = [
        {
            "id": "chat",
            "turns": [{"text": "hi"}, {"text": "and"}, {"text": "bye"}],
            "expected": {"reply": "hi+and+bye"},
        },
        {"id": "one", "input": {"text": "solo"}, "expected": {"reply": "solo"}},
    ]
    result = Experiment("chat", Chain("chat", [step]), cases, [exact("reply")]).run(tmp_path / "run")
    chat = result.case("chat")
    assert chat.status == "pass" and chat.turns == [
        {"reply": "hi"},
        {"reply": "hi+and"},
        {"reply": "hi+and+bye"},
    ]
    assert result.case("one").status == "pass" and result.case("one").turns is None
    assert (tmp_path / "run" / "experiment" / "turn-3" / "metadata.json").exists()


class Verdict(BaseModel):
    passed: bool
    score: float
    reason: str


class JudgeInput(BaseModel):
    case: dict[str, Any]
    expected: Any
    output: dict[str, Any]


def test_an_llm_judge_runs_through_the_runtime_and_its_failures_are_errors(
    calc_engine: str, tmp_path: Path
) -> None:
    def judge(request: ChatRequest) -> dict[str, Any]:
        text = request.messages[-1]["content"]
        if "7.0" in text:
            raise RuntimeError("judge engine down")
        ok = "expected 5 got 5.0" in text
        return {"passed": ok, "score": 1.0 if ok else 0.0, "reason": "matches" if ok else "differs"}

    register_engine("judge", backend="fake", responder=judge)
    step = Step(
        id="verdict", input_model=JudgeInput, output_model=Verdict, engine_name="judge",
        sampling=SamplingParams(max_tokens=64),
        user_prompt="{{ case.question }}: expected {{ expected.answer }} got {{ output.answer }}",
    )  # fmt: skip
    cases = [*CASES, {"id": "seven", "input": {"question": "3 + 4"}, "expected": {"answer": 7}}]
    result = Experiment("judged", build_chain, cases, [llm_judge(step)], CalcConfig).run(
        tmp_path / "run", ["engine=calc"]
    )
    assert [c.status for c in result.cases] == ["pass", "fail", "error", "error"]
    assert result.case("add").assessments["judge(verdict)"].reason == "matches"
    seven = result.case("seven")
    assert seven.error is not None and seven.error["node"] == "assess:judge(verdict)"
    assert "judge engine down" in seven.reason
    judge_meta = json.loads((tmp_path / "run" / "experiment" / "judge-verdict" / "metadata.json").read_text())
    assert judge_meta["counts"]["records_in"] == 3  # the chain's own error was never judged


def test_an_assessor_that_raises_marks_its_case_as_error(calc_engine: str, tmp_path: Path) -> None:
    def picky(case: Any, output: dict[str, Any]) -> bool:
        if output["answer"] == 5:
            raise ValueError("cannot judge fives")
        return True

    result = Experiment("calc", build_chain, CASES[:2], [picky], CalcConfig).run(
        tmp_path / "run", ["engine=calc"]
    )
    assert (
        result.case("add").status == "error"
        and result.case("add").reason == "assess:picky: cannot judge fives"
    )
    assert result.case("mul").status == "pass"


def test_a_filtered_case_is_an_error_not_a_failure(tmp_path: Path) -> None:
    def keep_big(p: Problem) -> Result | None:
        return Result(answer=len(p.question)) if len(p.question) > 3 else None

    chain = Chain("filter", [apply(keep_big)])
    cases = [
        {"id": "short", "input": {"question": "ab"}, "expected": 2},
        {"id": "long", "input": {"question": "abcd"}, "expected": 4},
    ]
    result = Experiment("f", chain, cases, [numeric("answer")]).run(tmp_path / "run")
    assert [c.status for c in result.cases] == ["error", "pass"]
    assert "filtered" in result.case("short").reason


def test_nested_runs_are_replaced_by_overwrite_but_a_stray_file_there_is_refused(
    calc_engine: str, tmp_path: Path
) -> None:
    from chainette import RunFolderError

    register_engine("judge", backend="fake", responder=lambda r: {"passed": True, "score": 1, "reason": ""})
    step = Step(
        id="verdict",
        input_model=JudgeInput,
        output_model=Verdict,
        engine_name="judge",
        user_prompt="{{ output }}",
    )
    experiment = Experiment("judged", build_chain, CASES[:1], [llm_judge(step)], CalcConfig)
    experiment.run(tmp_path / "run", ["engine=calc"])
    again = experiment.run(tmp_path / "run", ["engine=calc"], overwrite=True)
    assert again.case("add").status == "pass"
    (tmp_path / "run" / "experiment" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"experiment/notes\.txt"):
        experiment.run(tmp_path / "run", ["engine=calc"], overwrite=True)
    assert (tmp_path / "run" / "experiment" / "notes.txt").read_text() == "mine"
