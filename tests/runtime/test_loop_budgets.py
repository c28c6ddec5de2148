"""Per-record loop limits (``max_hops`` / ``max_tokens`` / ``deadline_s`` from a field or a
function of the record) and the state a loop carries from pass to pass (``LoopState.carry``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from tests.helpers import Question, qa_step

from chainette import (
    Chain,
    ChainDefinitionError,
    Loop,
    RecordView,
    Step,
    apply,
    register_engine,
)


class Task(BaseModel):
    x: int = 0
    goal: int = 100
    hops: int | None = None
    budget: int = 1000


class Label(BaseModel):
    label: str


def inc(t: Task) -> Task:
    return t.model_copy(update={"x": t.x + 1})


def test_records_with_their_own_hop_budgets_stop_at_their_own_limits(run_dir: Path) -> None:
    loop = Loop("l", apply(inc), until=lambda t: t.x >= t.goal, max_hops="hops", max_iterations=10)
    inputs = [Task(hops=2), Task(goal=3), Task(hops=7, goal=50), Task(hops=40)]
    rows = list(Chain("c", [loop]).run(inputs, output_dir=run_dir, ordered=True).flattened())
    got = [(r["l.stop_reason"], r["l.iterations"], r["inc.x"]) for r in rows]
    # own budget 2; no budget (None): until; own budget 7; own budget 40: the loop's cap first
    assert got == [("max_hops", 2, 2), ("until", 3, 3), ("max_hops", 7, 7), ("max_iterations", 10, 10)]


def test_token_budgets_from_a_function_of_the_record(run_dir: Path) -> None:
    register_engine("fake", backend="fake")

    class Asked(BaseModel):
        text: str
        tokens: int

    def start(a: Asked) -> Question:
        return Question(text=a.text)

    body = qa_step(prompt="{{ input.text }} {% if qa is defined %}{{ qa.answer }}{% endif %}")
    asked = [Asked(text="one", tokens=20), Asked(text="two", tokens=100_000)]

    def tokens_of(q: Question, record: RecordView) -> int:
        return int(record.input.tokens)

    loop = Loop("l", body, condition=lambda a: True, max_tokens=tokens_of, max_iterations=4)
    rows = list(Chain("c", [apply(start), loop]).run(asked, output_dir=run_dir, ordered=True).flattened())
    assert [r["l.stop_reason"] for r in rows] == ["max_tokens", "max_iterations"]
    assert rows[0]["l.iterations"] < 4 and rows[0]["l.tokens"] >= 20 and rows[1]["l.iterations"] == 4
    assert Loop("l", body, max_tokens=tokens_of).describe()["max_tokens"] == "fn tokens_of"


def test_a_record_whose_own_limit_is_invalid_fails_naming_the_record_and_the_field(run_dir: Path) -> None:
    loop = Loop("l", apply(inc), condition=lambda t: True, max_hops="hops", max_iterations=3)
    bad = Task.model_construct(x=0, goal=1, hops=0, budget=1)  # 0 hops: no valid limit
    result = Chain("c", [loop]).run([Task(hops=2), bad], output_dir=run_dir, ordered=True)
    [row] = list(result.flattened())
    assert (row["l.stop_reason"], row["l.iterations"]) == ("max_hops", 2)
    [failure] = result.failures()
    assert failure["node"] == "l" and failure["error_type"] == "invalid_input"
    assert failure["_id"] in failure["message"] and "max_hops" in failure["message"]
    assert "'hops'" in failure["message"] and failure["details"] == {"limit": "max_hops", "field": "hops"}


def test_a_limit_naming_a_field_the_record_lacks_is_refused_before_any_request(run_dir: Path) -> None:
    loop = Loop("l", apply(inc), condition=lambda t: True, max_tokens="token_budget")
    errors = Chain("c", [loop]).check().errors
    assert len(errors) == 1 and "max_tokens='token_budget'" in errors[0].message
    assert "Task (what enters the loop) has no field 'token_budget'" in errors[0].message
    with pytest.raises(ChainDefinitionError, match="token_budget"):
        Chain("c", [loop]).run([Task()], output_dir=run_dir)
    assert not run_dir.exists() or not (run_dir / "inc").exists()
    with pytest.raises(ChainDefinitionError, match="max_hops must be an integer >= 1, got '3 hops'"):
        Loop("l", apply(inc), max_hops="3 hops")


def test_the_value_a_pass_started_from_is_carried_by_the_loop_state(run_dir: Path) -> None:
    """``record["<loop>"].carry``: the state a pass started from, read by a node after one that
    changed the value's type (what ``record["x"] if "x" in record else record.input`` did)."""

    def to_label(t: Task) -> Label:
        return Label(label=f"x={t.x}")

    def back(label: Label, record: RecordView) -> Task:
        carried: Task = record["l"].carry
        return carried.model_copy(update={"x": carried.x + 10})

    register_engine("fake", backend="fake")
    say = Step(
        id="say",
        input_model=Label,
        output_model=Label,
        engine_name="fake",
        system_prompt="",
        user_prompt="{{ label }} from {{ l.carry.x }}",
    )
    loop = Loop("l", [apply(to_label), say, apply(back)], times=3)
    chain = Chain("c", [loop])
    assert chain.check().errors == []
    [row] = list(chain.run([Task(x=1)], output_dir=run_dir).flattened())
    assert (row["back.x"], row["l.iterations"]) == (31, 3)
    assert not any(key.startswith("l.carry") for key in row)  # never written
