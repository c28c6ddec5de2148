"""A playbook: PenguiFlow's ``playbook_retrieval`` (retrieve → rerank → compress) as a Chainette
subflow, used twice in one chain. Runs on the CPU.

    chainette run examples/playbook.py:chain -i examples/playbook.jsonl -o runs/playbook

PenguiFlow calls a mini flow from a node (``ctx.call_playbook``) so the main flow stays about
orchestration. Here the mini flow is a chain of its own, ``retrieval``:

1. ``retrieve`` (Python) takes the documents of a small in-memory corpus that share a word with
   the query;
2. ``rerank`` (Python) orders them by how many query words they share and keeps the top three;
3. ``compress`` (an LLM step) writes the one-sentence summary of what they say about the query.

The main chain uses it twice: ``background`` on the question as asked, then, after ``follow_up``
has turned the question into a narrower query (Python, reading the first summary), ``detail`` on
that. Each use writes its own folders (``background.compress/``, ``detail.compress/``) and counts
(``metadata.json`` ``nodes``); inside, the templates read the chain's own names (``{{ input.text
}}``, ``{{ rerank.passages }}``); after it, ``{{ background.summary }}`` and ``{{ detail.summary }}``
are all the main chain sees. ``answer`` writes the reply from both.

The engine is the embedded llama.cpp back-end with its bundled SmolLM2-135M model (tests
register a fake engine under the same name, ``local``); a larger GGUF writes better summaries.
"""

from pydantic import BaseModel, Field

from chainette import Chain, RecordView, SamplingParams, Step, apply, register_engine

ENGINE = "local"
register_engine(ENGINE, backend="llama_cpp", n_ctx=2048)

CORPUS = [
    "Emperor penguins are the tallest penguins, about 1.1 m.",
    "Emperor penguins breed on Antarctic sea ice during the winter.",
    "The male emperor penguin keeps the egg warm on its feet for two months.",
    "Adelie penguins build nests of small stones.",
    "Penguins eat krill, fish and squid.",
    "Krill are small crustaceans that swarm in cold seas.",
    "Little penguins, the smallest species, live in Australia and New Zealand.",
]
STOP = {
    "the",
    "a",
    "an",
    "of",
    "on",
    "in",
    "and",
    "do",
    "does",
    "what",
    "how",
    "who",
    "where",
    "is",
    "are",
    "about",
    "while",
    "which",
}


class Query(BaseModel):
    text: str


class Found(BaseModel):
    query: str
    passages: list[str]


class Summary(BaseModel):
    summary: str = Field(max_length=160, description="one sentence")


class Reply(BaseModel):
    reply: str = Field(max_length=200)


def _words(text: str) -> set[str]:
    return {w.strip(".,?!").lower() for w in text.split()} - STOP


def retrieve(q: Query) -> Found:
    words = _words(q.text)
    return Found(query=q.text, passages=[doc for doc in CORPUS if words & _words(doc)])


def rerank(found: Found) -> Found:
    words = _words(found.query)
    ranked = sorted(found.passages, key=lambda doc: -len(words & _words(doc)))
    return found.model_copy(update={"passages": ranked[:3] or ["(nothing found)"]})


compress = Step(
    id="compress",
    input_model=Found,
    output_model=Summary,
    engine_name=ENGINE,
    sampling=SamplingParams(temperature=0, max_tokens=80),
    system_prompt="Summarise the passages in one sentence that answers the query.",
    user_prompt="Query: {{ input.text }}\nPassages:{% for p in rerank.passages %}\n- {{ p }}{% endfor %}",
)

retrieval = Chain("retrieval", [apply(retrieve), apply(rerank), compress])
"""The playbook: a chain of its own, runnable alone (``retrieval.run(...)``)."""


def follow_up(s: Summary, record: RecordView) -> Query:
    """A narrower query for the second lookup: the question's words plus what the first summary added."""
    question = record.input.text
    extra = [w for w in sorted(_words(s.summary) - _words(question)) if len(w) > 4][:2]
    return Query(text=" ".join([question, *extra]))


answer = Step(
    id="answer",
    input_model=Summary,  # what reaches it: detail's summary
    output_model=Reply,
    engine_name=ENGINE,
    sampling=SamplingParams(temperature=0, max_tokens=96),
    system_prompt="Answer the question in one or two sentences using the notes.",
    user_prompt="Question: {{ input.text }}\nNotes: {{ background.summary }} {{ summary }}",
)

chain = Chain(
    "playbook",
    [retrieval.as_node("background"), apply(follow_up), retrieval.as_node("detail"), answer],
)

if __name__ == "__main__":
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/playbook"
    result = chain.run(here / "playbook.jsonl", output_dir=out, overwrite=True)
    for row in result.flattened():
        print(row["input.text"], "->", row["answer.reply"])
