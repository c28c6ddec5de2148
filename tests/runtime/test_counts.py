"""Counts in failures.jsonl and metadata.json say what happened: attempts made, requests answered."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Answer, Question, read_jsonl

from chainette import Chain, Step, register_engine
from chainette.engines.stub_server import Faults, StubServer


def qa(engine: str = "remote", max_reasks: int = 2) -> Step:
    return Step(
        id="qa",
        input_model=Question,
        output_model=Answer,
        engine_name=engine,
        user_prompt="Q: {{ text }}",
        max_reasks=max_reasks,
    )


def test_a_failure_row_counts_the_attempts_its_message_names(run_dir: Path) -> None:
    with StubServer(faults=Faults(rate_500=1.0)) as stub:
        register_engine(
            "remote", backend="openai", model="m", base_url=stub.base_url, max_retries=2, backoff_base=0.001
        )
        Chain("c", [qa()]).run([Question(text=f"q{i}") for i in range(3)], output_dir=run_dir)

    failures = read_jsonl(run_dir / "failures.jsonl")
    assert len(failures) == 3 and stub.stats["requests"] == 9
    for failure in failures:
        assert "HTTP 500" in failure["message"] and "after 3 attempt(s)" in failure["message"]
        assert failure["attempts"] == 3
