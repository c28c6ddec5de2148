"""Suites: the cases an experiment runs, read from a JSONL or YAML file (or given in Python).

A case is ``id`` (unique in the suite), ``input`` (a dict for the chain's input model),
``expected`` (any JSON: what assessors compare with), optional ``metadata`` and, for a
multi-turn case, ``turns`` (a list of inputs, instead of ``input``)::

    {"id": "add", "input": {"question": "2 + 3"}, "expected": {"answer": 5}}
    {"id": "chat", "turns": [{"text": "hi"}, {"text": "and then?"}], "expected": "..."}

A YAML suite is a list of such mappings, or a mapping with a ``cases:`` list. Every error names
the file, the line (JSONL line or where the YAML case starts) and the field, and says what to do.

Multi-turn cases: the chain runs once per turn; turn ``k`` gets, in its input model's
``history`` field, the earlier turns as ``[{"input": ..., "output": ...}, ...]``. A chain whose
input model has no ``history`` field cannot run a multi-turn case: :meth:`Suite.check` refuses
it, naming the case. ``expected`` is compared with the last turn's output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .._errors import ExperimentError

__all__ = ["HISTORY_FIELD", "Case", "Suite", "load_suite"]

HISTORY_FIELD = "history"
"""The input field a multi-turn case's later turns receive the conversation so far in."""

_KEYS = frozenset({"id", "input", "expected", "metadata", "turns"})


@dataclass
class Case:
    """One case of a suite.

    Example:
        >>> Case("add", {"question": "2 + 3"}, expected={"answer": 5}).turn_count
        1
    """

    id: str
    input: dict[str, Any] = field(default_factory=dict)
    """The first (or only) turn's input."""
    expected: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    turns: list[dict[str, Any]] | None = None
    """Every turn's input, for a multi-turn case (``input`` is then ``turns[0]``)."""
    where: str = ""
    """Human pointer for messages: ``cases.jsonl line 3`` or ``suite #3``."""

    @property
    def turn_count(self) -> int:
        return len(self.turns) if self.turns else 1

    def inputs(self) -> list[dict[str, Any]]:
        """Every turn's input (one for a single-turn case)."""
        return list(self.turns) if self.turns else [self.input]


@dataclass
class Suite:
    """The cases of an experiment, in order, with where they came from.

    Example:
        >>> suite = Suite([Case("a", {"x": 1}, expected=2)])
        >>> [c.id for c in suite]
        ['a']
    """

    cases: list[Case]
    path: Path | None = None
    sha256: str | None = None
    """Of the file's bytes (None for a suite built in Python)."""

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for case in self.cases:
            if case.id in seen:
                raise ExperimentError(
                    f"{case.where or 'suite'}: duplicate case id {case.id!r} (first at {seen[case.id]}). "
                    "Give every case its own id."
                )
            seen[case.id] = case.where or "an earlier case"

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    @classmethod
    def from_cases(cls, cases: Iterable[Case | dict[str, Any]]) -> Suite:
        """A suite from ``Case`` objects or case dicts (checked like a file's)."""
        out = [c if isinstance(c, Case) else _case(c, f"suite #{k + 1}") for k, c in enumerate(cases)]
        return cls(out)

    def check(self, input_model: type[BaseModel] | None) -> None:
        """Refuse, before anything runs, a case whose input does not fit ``input_model`` or that has
        several turns while the model has no ``history`` field (the message names the case)."""
        if input_model is None:
            return
        for case in self.cases:
            if case.turns and HISTORY_FIELD not in input_model.model_fields:
                raise ExperimentError(
                    f"{case.where}: case {case.id!r} has {len(case.turns)} turns, but the chain's input "
                    f"model {input_model.__name__} has no {HISTORY_FIELD!r} field to receive the earlier "
                    f"turns in. Add `{HISTORY_FIELD}: list[dict] = []` to {input_model.__name__}, or "
                    "make the case single-turn (`input` instead of `turns`)."
                )
            for k, value in enumerate(case.inputs()):
                probe = {HISTORY_FIELD: [], **value} if case.turns else value
                try:
                    input_model.model_validate(probe)
                except ValidationError as exc:
                    what = f"turn {k + 1} of case {case.id!r}" if case.turns else f"case {case.id!r}"
                    raise ExperimentError(
                        f"{case.where}: the input of {what} does not fit the chain's input model "
                        f"{input_model.__name__} ({_describe(exc)}). Fix the case or the input model."
                    ) from None


def load_suite(source: str | Path | Suite | Sequence[Case | dict[str, Any]]) -> Suite:
    """A suite from a ``.jsonl`` / ``.yaml`` / ``.yml`` file, a list of cases, or a Suite."""
    if isinstance(source, Suite):
        return source
    if not isinstance(source, (str, Path)):
        return Suite.from_cases(source)
    path = Path(source)
    if not path.is_file():
        raise ExperimentError(
            f"Suite file {str(path)!r} does not exist (looked in {Path.cwd()}). "
            "Give a .jsonl file (one case per line) or a .yaml file (a list of cases)."
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    text = data.decode("utf-8", errors="replace")
    if path.suffix == ".jsonl":
        cases = _jsonl(text, path.name)
    elif path.suffix in (".yaml", ".yml"):
        cases = _yaml(text, path.name)
    else:
        raise ExperimentError(f"Suite file {str(path)!r}: unknown kind; name it .jsonl, .yaml or .yml.")
    return Suite(cases, path=path, sha256=digest)


def _jsonl(text: str, name: str) -> list[Case]:
    cases = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExperimentError(f"{where}: not valid JSON ({exc.msg}). Fix or remove the line.") from None
        cases.append(_case(value, where))
    return cases


def _yaml(text: str, name: str) -> list[Case]:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{name}: not valid YAML ({exc}). Fix the file.") from None
    if isinstance(data, dict) and "cases" in data:
        data = data["cases"]
        assert isinstance(node, yaml.MappingNode)
        node = next(v for k, v in node.value if k.value == "cases")
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise ExperimentError(f"{name}: a YAML suite is a list of cases (or a mapping with a `cases:` list).")
    return [
        _case(value, f"{name} line {item.start_mark.line + 1}")
        for value, item in zip(data, node.value, strict=True)
    ]


def _case(value: Any, where: str) -> Case:
    if not isinstance(value, dict):
        raise ExperimentError(f"{where}: a case is an object with id, input, expected; got {value!r}.")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ExperimentError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; a case has "
            f"{', '.join(sorted(_KEYS))}. Put extra information under `metadata`."
        )
    case_id = value.get("id")
    if not isinstance(case_id, (str, int)) or isinstance(case_id, bool) or str(case_id) == "":
        raise ExperimentError(f"{where}: missing field 'id' (a non-empty string). Give every case an id.")
    turns = value.get("turns")
    if turns is not None:
        if "input" in value:
            raise ExperimentError(f"{where}: case {case_id!r} has both 'input' and 'turns'; keep one.")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
            raise ExperimentError(
                f"{where}: field 'turns' of case {case_id!r} must be a non-empty list of objects."
            )
        first = turns[0]
    else:
        first = value.get("input")
        if not isinstance(first, dict):
            raise ExperimentError(
                f"{where}: field 'input' of case {case_id!r} must be an object (the chain's input "
                f"fields), got {type(first).__name__ if first is not None else 'nothing'}."
            )
    metadata = value.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ExperimentError(f"{where}: field 'metadata' of case {case_id!r} must be an object.")
    return Case(str(case_id), first, value.get("expected"), metadata, turns, where)


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"field '{'.'.join(str(p) for p in e['loc']) or '(root)'}': {e['msg']}" for e in exc.errors()[:3]
    )
