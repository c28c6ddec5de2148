"""Dialogue per-turn instructions (BatchFactory's ``Teacher("...", k)``) and a closing turn that
is part of the transcript."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from chainette import (
    Agent,
    Chain,
    ChainDefinitionError,
    ChatRequest,
    Dialogue,
    TemplateError,
    register_engine,
)


class Lesson(BaseModel):
    text: str


def speaker_of(request: ChatRequest) -> str:
    return request.tag.split("/")[0].split(".", 1)[1]


class Recorder:
    """Answers ``"<agent>#<n>"`` and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    def __call__(self, request: ChatRequest) -> Any:
        self.requests.append(request)
        own = sum(1 for m in request.messages if m["role"] == "assistant")
        return {"text": f"{speaker_of(request)}#{own + 1}"}

    def last_user(self) -> list[tuple[str, str]]:
        """Per request in order: the speaker and the last user message it was sent."""
        return [(speaker_of(r), r.messages[-1]["content"].split("\n\n")[-1]) for r in self.requests]


@pytest.fixture
def recorder() -> Recorder:
    rec = Recorder()
    register_engine("fake", backend="fake", responder=rec)
    return rec


def lesson(**options: Any) -> Dialogue:
    teacher = Agent(
        "teacher",
        "You are a teacher.",
        "fake",
        instructions=["Explain {{ text }} first.", "Answer the question or go on explaining."],
    )
    student = Agent("student", "You are a student.", "fake", instructions={1: "Ask about {{ text }}."})
    return Dialogue("lesson", [teacher, student], opening="Today: {{ text }}", input_model=Lesson, **options)


def test_each_agent_is_told_its_instruction_for_its_own_turn(recorder: Recorder, run_dir: Path) -> None:
    result = Chain("c", [lesson(turns=5)]).run([Lesson(text="tides")], output_dir=run_dir)
    assert result.counts["failures"] == 0
    assert recorder.last_user() == [
        ("teacher", "Explain tides first."),  # teacher's turn 0: the opening, then its instruction
        ("student", "teacher: teacher#1"),  # student's turn 0: no instruction
        ("teacher", "Answer the question or go on explaining."),
        ("student", "Ask about tides."),  # its turn 1
        ("teacher", "Answer the question or go on explaining."),  # the last entry goes on
    ]
    first = recorder.requests[0].messages
    assert [m["role"] for m in first] == ["system", "user"]
    assert first[-1]["content"] == "Today: tides\n\nExplain tides first."


def test_the_closing_turn_is_the_transcripts_last(recorder: Recorder, run_dir: Path) -> None:
    closing = ("teacher", "Sum up the lesson on {{ text }} in one sentence.")
    result = Chain("c", [lesson(turns=4, closing=closing)]).run(
        [Lesson(text="tides"), Lesson(text="waves")], output_dir=run_dir, ordered=True
    )
    assert result.counts["failures"] == 0
    rows = list(result.flattened())
    turns = rows[0]["lesson.turns"]
    assert [(t["speaker"], t["text"]) for t in turns] == [
        ("teacher", "teacher#1"),
        ("student", "student#1"),
        ("teacher", "teacher#2"),
        ("student", "student#2"),
        ("teacher", "teacher#3"),  # the closing turn
    ]
    assert rows[0]["lesson.stop_reason"] == "turns"
    closing_requests = [r for r in recorder.requests if "Sum up" in r.messages[-1]["content"]]
    assert len(closing_requests) == 2
    waves = next(r for r in closing_requests if "waves" in r.messages[-1]["content"])
    assert waves.messages[-1]["content"].endswith(
        "student: student#2\n\nSum up the lesson on waves in one sentence."
    )
    assert [m["role"] for m in waves.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    # a rerun is answered from the ledger, closing turn included
    count = len(recorder.requests)
    Chain("c", [lesson(turns=4, closing=closing)]).run(
        [Lesson(text="tides"), Lesson(text="waves")], output_dir=run_dir.parent / "again"
    )
    assert len(recorder.requests) == count


def test_a_closing_turn_after_until_and_mistakes_refused(recorder: Recorder, run_dir: Path) -> None:
    dialogue = lesson(until=lambda t: len(t.turns) >= 3, closing=("student", "Say thanks."))
    [row] = Chain("c", [dialogue]).run([Lesson(text="tides")], output_dir=run_dir).flattened()
    assert [t["speaker"] for t in row["lesson.turns"]] == ["teacher", "student", "teacher", "student"]
    assert row["lesson.stop_reason"] == "until" and recorder.last_user()[-1] == ("student", "Say thanks.")
    with pytest.raises(ChainDefinitionError, match="did you mean 'teacher'"):
        lesson(turns=2, closing=("teacher2", "Sum up."))
    with pytest.raises(ChainDefinitionError, match="closing must be"):
        lesson(turns=2, closing="teacher: sum up")  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="instructions\\[1\\]"):
        Agent("a", "", "fake", instructions=["ok", "{{ broken"])
    with pytest.raises(ChainDefinitionError, match="instructions must be"):
        Agent("a", "", "fake", instructions=[3])  # type: ignore[list-item]
    unknown = Dialogue(
        "d",
        [Agent("a", "", "fake", instructions={0: "{{ txt }}"}), Agent("b", "", "fake")],
        opening="hi",
        turns=2,
        input_model=Lesson,
        closing=("b", "{{ texts }}"),
    )
    messages = [e.message for e in Chain("c", [unknown]).check().errors]
    assert any("instructions[0]" in m and "txt" in m for m in messages)
    assert any("closing" in m and "texts" in m for m in messages)
