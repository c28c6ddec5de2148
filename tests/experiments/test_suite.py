"""Suites from JSONL and YAML files, and every loading error naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from tests.experiments.shared import Problem, write_jsonl

from chainette import Case, ExperimentError, Suite
from chainette.experiments import load_suite


class Chat(BaseModel):
    text: str
    history: list[dict] = []  # type: ignore[type-arg]


def test_a_jsonl_suite_loads_cases_in_order_with_their_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "cases.jsonl",
        [
            {
                "id": "add",
                "input": {"question": "2 + 3"},
                "expected": {"answer": 5},
                "metadata": {"level": 1},
            },
            {"id": 7, "input": {"question": "2 * 3"}, "expected": 6},
        ],
    )
    suite = load_suite(path)
    assert [c.id for c in suite] == ["add", "7"]
    assert suite.cases[0].expected == {"answer": 5} and suite.cases[0].metadata == {"level": 1}
    assert suite.cases[1].where == "cases.jsonl line 2"
    assert suite.path == path and suite.sha256 is not None and len(suite.sha256) == 64


def test_a_yaml_suite_loads_a_list_or_a_cases_mapping(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text(
        "- id: a\n  input: {question: '1 + 1'}\n  expected: 2\n- id: b\n  turns:\n    - {text: hi}\n"
    )
    mapping = tmp_path / "map.yml"
    mapping.write_text("name: demo\ncases:\n  - id: a\n    input: {question: '1 + 1'}\n")
    suite = load_suite(listing)
    assert [c.id for c in suite] == ["a", "b"]
    assert suite.cases[1].turns == [{"text": "hi"}] and suite.cases[1].where == "list.yaml line 4"
    assert [c.id for c in load_suite(mapping)] == ["a"]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"input": {"question": "x"}}', ["cases.jsonl line 2", "missing field 'id'"]),
        (
            '{"id": "a", "input": {"question": "x"}}',
            ["cases.jsonl line 2", "duplicate case id 'a'", "line 1"],
        ),
        ('{"id": "b", "input": "2 + 2"}', ["cases.jsonl line 2", "field 'input'", "must be an object"]),
        ('{"id": "b", "inptu": {}}', ["cases.jsonl line 2", "unknown field(s) 'inptu'", "metadata"]),
        ("{not json", ["cases.jsonl line 2", "not valid JSON"]),
    ],
)
def test_loading_errors_name_the_file_line_and_field(tmp_path: Path, line: str, words: list[str]) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text('{"id": "a", "input": {"question": "x"}}\n' + line + "\n")
    with pytest.raises(ExperimentError) as info:
        load_suite(path)
    for word in words:
        assert word in str(info.value)


def test_a_yaml_error_names_the_line_of_the_case(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("- id: a\n  input: {question: x}\n- input: {question: y}\n")
    with pytest.raises(ExperimentError, match=r"s\.yaml line 3: missing field 'id'"):
        load_suite(path)


def test_an_input_that_does_not_fit_the_chain_is_refused_naming_case_and_field(tmp_path: Path) -> None:
    suite = load_suite(write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "input": {"questoin": "x"}}]))
    with pytest.raises(ExperimentError) as info:
        suite.check(Problem)
    assert "c.jsonl line 1" in str(info.value) and "case 'a'" in str(info.value)
    assert "field 'question'" in str(info.value) and "Problem" in str(info.value)


def test_a_multi_turn_case_needs_a_history_field_in_the_input_model() -> None:
    suite = Suite.from_cases([{"id": "chat", "turns": [{"question": "a"}, {"question": "b"}]}])
    with pytest.raises(ExperimentError, match=r"case 'chat' has 2 turns.*Problem has no 'history' field"):
        suite.check(Problem)
    Suite.from_cases([{"id": "chat", "turns": [{"text": "a"}, {"text": "b"}]}]).check(Chat)


def test_a_missing_suite_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="does not exist"):
        load_suite(tmp_path / "nope.jsonl")
    assert Case("a", {"x": 1}).turn_count == 1
