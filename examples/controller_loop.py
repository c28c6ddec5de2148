"""A controller loop: PenguiFlow's ``controller_multihop`` as a Chainette ``Loop``. Runs on the CPU.

    chainette run examples/controller_loop.py:chain -i examples/controller_loop.jsonl -o runs/controller

PenguiFlow's example wires a controller node to itself: each hop the controller looks at its
working memory, either acts (a tool call whose result goes back into the memory) or returns a
``FinalAnswer``; a hop budget, a token budget and a deadline end runaway loops with a recorded
reason. Here the same thing is a :class:`chainette.Loop` over two nodes:

1. ``think`` (an LLM step) reads the question and the notes gathered so far and decides:
   ``search`` for a term, or ``answer``.
2. ``act`` (Python) runs the search in a small in-memory knowledge base and adds the result to
   the notes, or records the answer and marks the work done.

The loop ends when the work is done (``until``), or at a limit: ``max_iterations=4`` passes,
``max_tokens=2000`` (tokens of every answer the record got in the loop, answers from the ledger
included, so a rerun stops at the same pass), ``deadline_s=120``. With ``on_limit="continue"``
a record that runs out still goes on, and ``final`` reports why it stopped (``{{ controller.
stop_reason }}``, PenguiFlow's "Hop budget exhausted" / "Token budget exhausted").

The engine is the embedded llama.cpp back-end with its bundled SmolLM2-135M model (tests
register a fake engine under the same name, ``local``); a larger GGUF decides better.
"""

from typing import Literal

from pydantic import BaseModel, Field

from chainette import Chain, Loop, RecordView, SamplingParams, Step, apply, register_engine

ENGINE = "local"
register_engine(ENGINE, backend="llama_cpp", n_ctx=2048)

KNOWLEDGE = {  # the first entry whose key the search term contains answers it
    "emperor": "The emperor penguin is the tallest penguin, about 1.1 m.",
    "krill": "Krill are small crustaceans; many penguins eat them.",
    "eat": "Most penguins eat krill, fish and squid.",
    "antarctica": "Antarctica is the coldest continent; emperor penguins breed there in winter.",
    "breed": "Emperor penguins breed on Antarctic sea ice in winter.",
    "penguin": "Penguins are flightless seabirds of the southern hemisphere.",
}


class Task(BaseModel):
    question: str


class Work(BaseModel):
    """The controller's working memory: what the loop carries from pass to pass."""

    question: str
    notes: list[str] = []
    answer: str | None = None
    done: bool = False


class Thought(BaseModel):
    action: Literal["search", "answer"] = Field(description="search for a term, or answer now")
    term: str = Field(max_length=30, description="one word to look up (for search)")
    answer: str = Field(max_length=120, description="the answer (for answer)")


class FinalAnswer(BaseModel):
    question: str
    answer: str
    stop_reason: str
    passes: int
    notes: int


def start(task: Task) -> Work:
    return Work(question=task.question)


think = Step(
    id="think",
    input_model=Work,
    output_model=Thought,
    engine_name=ENGINE,
    sampling=SamplingParams(temperature=0, max_tokens=96),
    system_prompt=(
        "You answer questions about penguins. Each turn, either search one word in the encyclopedia "
        "(action search) or, once the notes are enough, answer in one sentence (action answer)."
    ),
    user_prompt=(
        "Question: {{ question }}\n"
        "Notes so far:{% for n in notes %}\n- {{ n }}{% else %} none{% endfor %}\n"
        "Pass {{ controller.iteration + 1 }} of 4."
    ),
)


def act(thought: Thought, record: RecordView) -> Work:
    """Run the chosen action against the working memory of the previous pass."""
    work: Work = record["act"] if "act" in record else record["start"]
    if thought.action == "answer":
        return work.model_copy(update={"answer": thought.answer, "done": True})
    term = thought.term.strip().lower()
    found = next(
        (text for key, text in KNOWLEDGE.items() if key in term), f"nothing found for {thought.term!r}"
    )
    return work.model_copy(update={"notes": [*work.notes, found]})


def final(work: Work, record: RecordView) -> FinalAnswer:
    state = record["controller"]
    answer = work.answer or (work.notes[-1] if work.notes else "no answer")
    return FinalAnswer(
        question=work.question,
        answer=answer,
        stop_reason=state.stop_reason,
        passes=state.iterations,
        notes=len(work.notes),
    )


controller = Loop(
    "controller",
    [think, apply(act)],
    until=lambda work: work.done,
    max_iterations=4,
    max_tokens=2000,
    deadline_s=120,
    on_limit="continue",
)

chain = Chain("controller loop", [apply(start), controller, apply(final, write=True)], batch_size=8)
