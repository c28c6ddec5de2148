"""Assessors: how an experiment scores each case's output (GoTaglio's ``assess`` stage).

An assessor is called with ``(case, output)`` and returns an :class:`Assessment`. ``output`` is
the chain's final output as its typed model (a list of them after a fan-out): ``out.answer`` is
typed, and ``out["answer"]`` still reads the JSON value as the dict of earlier versions did
(:func:`typed_output`; an output that does not validate stays the dict it was).
``case.expected`` is given as the suite wrote it (it may be partial, or a bare value). Built in:

- :func:`exact`: the output (or one field) equals ``expected`` (or the same field of it),
  optionally ignoring case and surrounding / repeated whitespace;
- :func:`numeric`: a number within ``tolerance`` of the expected one (GoTaglio's calc sample);
  the absolute error is its ``metric`` (GoTaglio's calc scores the error itself; here every
  score is in [0, 1], higher is better, so scores of different assessors read the same way);
- :func:`function`: any ``fn(case, output)`` returning a bool, a float score or an Assessment;
- :func:`llm_judge`: a typed ``Step`` asked for a verdict (``passed``, optional ``score`` and
  ``reason``), run through the runtime like any step: ledger, engine, failures.

Assessors of one experiment all see every case; :func:`combine` folds their verdicts into one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .._errors import ExperimentError
from ..graph.nodes import Step
from .suite import Case

__all__ = [
    "Assessment",
    "Assessor",
    "FunctionAssessor",
    "JudgeAssessor",
    "combine",
    "exact",
    "function",
    "llm_judge",
    "numeric",
    "typed_output",
]


@dataclass(frozen=True)
class Assessment:
    """One assessor's verdict on one case: ``passed`` (None: not a pass/fail assessor), ``score``
    (None: none), a short ``reason`` and ``metric``, a raw figure in the assessor's own unit.

    The one score rule: a score is a number in [0, 1], higher is better, 1 for a perfect answer
    (``exact`` and ``numeric`` give 1 on a pass, 0 on a fail). What an assessor measured in its own
    unit (``numeric``: the absolute error) goes in ``metric``, never in ``score``.
    """

    passed: bool | None = None
    score: float | None = None
    reason: str = ""
    metric: float | None = None


class _ItemAccess:
    """Mixed into an output model for assessors: item access reads the JSON form, as when the
    output was a dict (``out["answer"]``, ``out.get("answer")``, ``"answer" in out``, ``out ==
    {...}``), while attributes stay typed."""

    def _json(self) -> dict[str, Any]:
        dumped: dict[str, Any] = self.model_dump(mode="json")  # type: ignore[attr-defined]
        return dumped

    def __getitem__(self, key: str) -> Any:
        return self._json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._json().get(key, default)

    def keys(self) -> Iterator[str]:
        return iter(self._json())

    def values(self) -> Iterator[Any]:
        return iter(self._json().values())

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self._json().items())

    def __contains__(self, key: object) -> bool:
        return key in self._json()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return self._json() == other
        if isinstance(other, BaseModel) and (isinstance(self, type(other)) or isinstance(other, type(self))):
            return self._json() == other.model_dump(mode="json")  # Answer(...) == the typed output
        return bool(super().__eq__(other))

    __hash__ = None  # type: ignore[assignment]


@functools.cache
def _readable(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with :class:`_ItemAccess` (same name, same fields: ``isinstance(out, model)``)."""
    return type(model.__name__, (_ItemAccess, model), {"__module__": model.__module__})


def typed_output(value: Any, models: Sequence[type[BaseModel]]) -> Any:
    """``value`` (a chain's final output read back as JSON: a dict, or a list after a fan-out) as
    the first of ``models`` it validates into, with dict-style item access kept; else unchanged.

    Example:
        >>> class Answer(BaseModel):
        ...     answer: int
        >>> out = typed_output({"answer": 5}, [Answer])
        >>> isinstance(out, Answer), out.answer, out["answer"]
        (True, 5, 5)
    """
    if isinstance(value, list):
        return [typed_output(item, models) for item in value]
    if not isinstance(value, dict):
        return value
    for model in models:
        try:
            return _readable(model).model_validate(value)
        except ValidationError:
            continue
    return value


def check_score(score: Any, who: str) -> float:
    """``score`` as a float in [0, 1], or ExperimentError naming ``who`` and the rule."""
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
        raise ExperimentError(
            f"{who} gave the score {score!r}; a score is a number in [0, 1], higher is better. Put a raw "
            "figure (an error, a distance, a count) in Assessment(metric=...) and keep score in [0, 1]."
        )
    return float(score)


class Assessor:
    """The contract: a ``name`` and ``__call__(case, output) -> Assessment``. An assessor that needs
    a run of its own (the LLM judge) sets ``needs_run`` and is driven by the experiment instead."""

    name: str = "assessor"
    needs_run: bool = False

    def __call__(self, case: Case, output: Any) -> Assessment:
        raise NotImplementedError(f"{type(self).__name__} does not assess one case at a time")


class FunctionAssessor(Assessor):
    """An assessor from a function ``fn(case, output)``; see :func:`function`."""

    def __init__(self, fn: Callable[[Case, Any], Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "function"))

    def __call__(self, case: Case, output: Any) -> Assessment:
        result = self.fn(case, output)
        who = f"Assessor {self.name!r}"
        if isinstance(result, Assessment):
            if result.score is not None:
                check_score(result.score, who)
            return result
        if isinstance(result, bool):
            return Assessment(passed=result)
        if isinstance(result, (int, float)):
            return Assessment(score=check_score(result, who))
        raise ExperimentError(
            f"Assessor {self.name!r} returned {type(result).__name__}; return a bool (passed), a "
            "number (score) or an Assessment."
        )


def function(fn: Callable[[Case, Any], Any], *, name: str | None = None) -> Assessor:
    """An assessor from ``fn(case, output) -> bool | float | Assessment``.

    Example:
        >>> short = function(lambda case, out: len(out["answer"]) < 20, name="short")
        >>> short(Case("a", {}), {"answer": "yes"}).passed
        True
    """
    return FunctionAssessor(fn, name)


def _pick(value: Any, field: str | None, what: str) -> Any:
    if field is None:
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if not isinstance(value, dict) or field not in value:
        raise KeyError(f"the {what} has no field {field!r}")
    return value[field]


def exact(
    field: str | None = None, *, ignore_case: bool = False, ignore_whitespace: bool = False
) -> Assessor:
    """Passes when the output (or its ``field``) equals ``expected`` (or ``expected[field]`` when
    ``expected`` is an object holding that field).

    Example:
        >>> exact("answer", ignore_case=True)(Case("a", {}, expected="Paris"), {"answer": "paris"}).passed
        True
    """

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            if ignore_whitespace:
                value = " ".join(value.split())
            if ignore_case:
                value = value.casefold()
        return value

    def check(case: Case, output: Any) -> Assessment:
        try:
            got = _pick(output, field, "output")
        except KeyError as exc:
            return Assessment(passed=False, score=0.0, reason=str(exc.args[0]))
        expected = case.expected
        if field is not None and isinstance(expected, dict) and field in expected:
            expected = expected[field]
        if norm(got) == norm(expected):
            return Assessment(passed=True, score=1.0)
        return Assessment(passed=False, score=0.0, reason=f"got {got!r}, expected {expected!r}")

    return FunctionAssessor(check, f"exact({field})" if field else "exact")


def numeric(field: str | None = None, tolerance: float = 0.0) -> Assessor:
    """Passes when the output's number (or its ``field``) is within ``tolerance`` of the expected
    one. The score is 1 on a pass, 0 on a fail (the one score rule, see :class:`Assessment`); the
    absolute error is the ``metric``, and in the reason on a fail. A value that is not a number
    fails, saying so (no metric).

    Example:
        >>> numeric("answer", tolerance=0.01)(Case("a", {}, expected=5), {"answer": 5.001}).passed
        True
    """

    def check(case: Case, output: Any) -> Assessment:
        try:
            got = _number(_pick(output, field, "output"))
            expected = case.expected
            if field is not None and isinstance(expected, dict) and field in expected:
                expected = expected[field]
            want = _number(expected)
        except (KeyError, ValueError) as exc:
            return Assessment(passed=False, score=0.0, reason=str(exc.args[0]))
        error = abs(got - want)
        passed = error <= tolerance
        return Assessment(
            passed=passed,
            score=1.0 if passed else 0.0,
            reason="" if passed else f"got {got:g}, expected {want:g} (off by {error:g})",
            metric=error,
        )

    return FunctionAssessor(check, f"numeric({field})" if field else "numeric")


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if math.isnan(out):
        raise ValueError("the value is NaN")
    return out


class JudgeAssessor(Assessor):
    """An LLM judge: the experiment runs ``step`` over one record per assessed case (a run folder
    of its own, ``experiment/judge-<step id>/``) and reads its verdicts. See :func:`llm_judge`."""

    needs_run = True

    def __init__(self, step: Step) -> None:
        model = step.output_model
        if model is None or "passed" not in model.model_fields:
            raise ExperimentError(
                f"llm_judge: step {step.id!r}'s output model must have a `passed: bool` field "
                "(and may have `score: float` and `reason: str`)."
            )
        self.step = step
        self.name = f"judge({step.id})"

    @staticmethod
    def record(case: Case, output: Any) -> dict[str, Any]:
        """What the judge step gets: ``case`` (the case's input), ``expected``, ``output``,
        ``case_id`` and ``metadata`` (its input model declares the fields it reads)."""
        return {
            "case_id": case.id,
            "case": case.inputs()[-1],
            "expected": case.expected,
            "output": output,
            "metadata": case.metadata,
        }

    @staticmethod
    def verdict(row: dict[str, Any]) -> Assessment:
        """The judge's answer as an Assessment; a score outside [0, 1] is not kept as the score
        (it stays visible as the ``metric``, and the reason says so)."""
        passed, score, reason = row.get("passed"), row.get("score"), str(row.get("reason") or "")
        kept, metric = None, None
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            if 0.0 <= float(score) <= 1.0:
                kept = float(score)
            else:
                metric = float(score)
                reason = "; ".join(x for x in (reason, f"score {score:g} is outside [0, 1], not kept") if x)
        return Assessment(
            passed=bool(passed) if passed is not None else None, score=kept, reason=reason, metric=metric
        )


def llm_judge(step: Step) -> Assessor:
    """An assessor that asks ``step`` (an LLM step whose output model has ``passed: bool``, and
    optionally ``score`` and ``reason``) for a verdict on each case.

    The step's input model reads any of ``case`` (the case's input), ``expected``, ``output``,
    ``case_id``, ``metadata``; e.g. ``user_prompt="Expected {{ expected }}; got {{ output.answer }}"``.
    A judge's own failure (invalid verdict, engine error) makes that case ``error``, not ``fail``.
    """
    return JudgeAssessor(step)


def combine(
    assessments: Sequence[Assessment],
) -> tuple[Literal["pass", "fail", "unscored"], float | None, str]:
    """``(status, score, reason)`` of a case from its assessors' verdicts: ``fail`` if any failed,
    else ``pass`` if any passed, else ``unscored``; the score is the mean of the assessors' scores
    (each in [0, 1], so the case's is too; None when none gave one); the reason joins the
    non-empty reasons."""
    verdicts = [a.passed for a in assessments if a.passed is not None]
    status: Literal["pass", "fail", "unscored"] = (
        "fail" if False in verdicts else "pass" if verdicts else "unscored"
    )
    scores = [a.score for a in assessments if a.score is not None]
    score = round(sum(scores) / len(scores), 6) if scores else None
    reason = "; ".join(a.reason for a in assessments if a.reason)
    return status, score, reason
