"""Each built-in assessor on its own, and how an experiment folds their verdicts."""

from __future__ import annotations

import pytest
from tests.experiments.shared import Problem, Result

from chainette import Assessment, Case, ExperimentError, Step, exact, llm_judge, numeric
from chainette.experiments import function
from chainette.experiments.assess import JudgeAssessor, combine


def case(expected: object) -> Case:
    return Case("c", {"question": "q"}, expected=expected)


def test_exact_compares_the_whole_output_or_one_field() -> None:
    assert exact()(case({"answer": "Paris"}), {"answer": "Paris"}).passed is True
    assert exact()(case({"answer": "Paris"}), {"answer": "paris"}).passed is False
    assert exact("answer")(case("Paris"), {"answer": "Paris"}).passed is True
    assert exact("answer")(case({"answer": "Paris"}), {"answer": "Paris"}).passed is True
    failed = exact("answer")(case("Paris"), {"answer": "Lyon"})
    assert failed.passed is False and "got 'Lyon', expected 'Paris'" in failed.reason
    assert "no field 'answer'" in exact("answer")(case("Paris"), {"text": "Paris"}).reason


def test_exact_ignores_case_and_whitespace_only_when_asked() -> None:
    out = {"answer": "  New   York "}
    assert exact("answer")(case("new york"), out).passed is False
    assert exact("answer", ignore_case=True)(case("new york"), out).passed is False
    assert exact("answer", ignore_case=True, ignore_whitespace=True)(case("new york"), out).passed is True


def test_numeric_scores_one_or_zero_and_keeps_the_error_as_its_metric() -> None:
    near = numeric("answer", tolerance=0.01)(case(5), {"answer": 5.004})
    assert near.passed is True and near.score == 1.0 and near.metric == pytest.approx(0.004)
    off = numeric("answer", tolerance=0.01)(case({"answer": 5}), {"answer": 5.5})
    assert off == Assessment(passed=False, score=0.0, reason="got 5.5, expected 5 (off by 0.5)", metric=0.5)
    assert numeric("answer")(case(5), {"answer": "five"}) == Assessment(
        passed=False, score=0.0, reason="'five' is not a number"
    )


def test_every_built_in_score_is_in_zero_one_higher_is_better() -> None:
    for assessor, right, wrong in (
        (exact("answer"), {"answer": 5}, {"answer": 6}),
        (numeric("answer"), {"answer": 5}, {"answer": 600}),
    ):
        assert assessor(case(5), right).score == 1.0 and assessor(case(5), wrong).score == 0.0
        assert assessor(case(5), {}).score == 0.0  # no such field: a fail, scored as one


def test_a_score_outside_zero_one_is_refused_or_not_kept() -> None:
    with pytest.raises(ExperimentError, match=r"score 3.5; a score is a number in \[0, 1\]"):
        function(lambda c, o: 3.5, name="raw")(case(None), {})
    with pytest.raises(ExperimentError, match="metric"):
        function(lambda c, o: Assessment(score=-1), name="neg")(case(None), {})
    judged = JudgeAssessor.verdict({"passed": True, "score": 7, "reason": "fine"})
    assert judged.score is None and judged.metric == 7 and "outside [0, 1]" in judged.reason


def test_function_takes_a_bool_a_score_or_an_assessment() -> None:
    assert function(lambda c, o: o["answer"] > 1)(case(None), {"answer": 2}) == Assessment(passed=True)
    assert function(lambda c, o: 0.25)(case(None), {}) == Assessment(score=0.25)
    verdict = Assessment(passed=False, reason="too long")
    assert function(lambda c, o: verdict)(case(None), {}) is verdict
    with pytest.raises(ExperimentError, match="returned str"):
        function(lambda c, o: "yes", name="bad")(case(None), {})


def test_llm_judge_refuses_a_step_without_a_passed_field() -> None:
    step = Step(id="judge", input_model=Problem, output_model=Result, engine_name="calc", user_prompt="x")
    with pytest.raises(ExperimentError, match="must have a `passed: bool` field"):
        llm_judge(step)


def test_combine_fails_on_any_failure_and_is_unscored_without_verdicts() -> None:
    assert combine([Assessment(passed=True, score=1), Assessment(passed=False, reason="no")]) == (
        "fail",
        1,
        "no",
    )
    assert combine([Assessment(passed=True), Assessment(score=0.5)]) == ("pass", 0.5, "")
    assert combine([Assessment(score=0.5)]) == ("unscored", 0.5, "")
    assert combine([Assessment(passed=True, score=1.0), Assessment(passed=False, score=0.0)])[:2] == (
        "fail",
        0.5,
    )  # the mean of the scores
