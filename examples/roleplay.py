"""Role-play: a teacher and a student talk about a passage, then the teacher sums up. Runs on the CPU.

    chainette run examples/roleplay.py:chain -i examples/roleplay.jsonl -o runs/roleplay

A port of BatchFactory's role-playing loop (``Teacher(...) | Repeat(Student(...) | Teacher(...), 3)
| Teacher("summarise") | ChatHistoryToText()``): the teacher opens, then student and teacher
speak three times each (a 7-turn ``Dialogue``), a step has the teacher summarise the lesson, and
a Python node writes the conversation out as a script with the characters' names. Every turn is
one request in the ledger: a rerun sends nothing.

The engine is the embedded llama.cpp back-end with its bundled SmolLM2-135M model (about a
minute for the two passages on two cores); a larger GGUF (``model="/path/to.gguf"``) talks better.
"""

from pydantic import BaseModel, Field

from chainette import (
    Agent,
    Chain,
    Dialogue,
    RecordView,
    SamplingParams,
    Step,
    Transcript,
    apply,
    register_engine,
)

register_engine("local", backend="llama_cpp", n_ctx=2048)

SAMPLING = SamplingParams(temperature=0, max_tokens=64)


class Lesson(BaseModel):
    title: str
    passage: str
    teacher_name: str = "Alice"
    student_name: str = "Bob"


class Recap(BaseModel):
    summary: str = Field(max_length=160, description="What the lesson taught, in one sentence")


class Script(BaseModel):
    text: str


TEACHER_PROMPT = (
    "You are {{ teacher_name }}, a teacher. Talk with your student {{ student_name }} about the story "
    "'{{ title }}': say what happens and what it teaches, and answer questions, one short sentence at a time."
)
STUDENT_PROMPT = (
    "You are {{ student_name }}, a curious student. Your teacher {{ teacher_name }} is explaining the story "
    "'{{ title }}'. Ask one short question about it, or answer the teacher's question."
)

teacher = Agent("teacher", TEACHER_PROMPT, "local", sampling=SAMPLING, max_chars=160)
student = Agent("student", STUDENT_PROMPT, "local", sampling=SAMPLING, max_chars=100)

lesson = Dialogue(
    "lesson",
    [teacher, student],  # round robin: teacher, student, teacher, ...
    opening="The story:\n{{ passage }}\n\nTeacher, what happens in this story, and what does it teach us?",
    turns=7,  # the teacher's opening, then three rounds of student and teacher
    input_model=Lesson,
)

summary = Step(
    id="summary",
    input_model=Transcript,
    output_model=Recap,
    engine_name="local",
    sampling=SAMPLING,
    system_prompt="You are {{ input.teacher_name }}, a teacher, closing a lesson on '{{ input.title }}'.",
    user_prompt=(
        "The lesson so far:\n{% for turn in lesson.turns %}{{ turn.speaker }}: {{ turn.text }}\n{% endfor %}\n"
        "Please summarise the lesson for your student."
    ),
)


def to_script(recap: Recap, record: RecordView) -> Script:
    """BatchFactory's ``ChatHistoryToText``: the conversation as lines of ``Name: text``."""
    lesson_input = record.input
    names = {"teacher": lesson_input.teacher_name, "student": lesson_input.student_name}
    lines = [f"{names[turn.speaker]}: {turn.text}" for turn in record["lesson"].turns]
    lines.append(f"{lesson_input.teacher_name}: {recap.summary}")
    return Script(text="\n".join(lines))


chain = Chain(name="Role-play: teacher and student", steps=[lesson, summary, apply(to_script)])
