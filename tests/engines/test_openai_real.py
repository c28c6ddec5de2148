"""The ``openai`` back-end against a real llama-cpp-python server with SmolLM2-135M (on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers import (
    Answer,
    Question,
    Summary,
    Translation,
    assert_every_record_accounted_for,
    assert_secret_nowhere,
    join_chain,
    read_jsonl,
)

from chainette import register_engine
from chainette.engines.stub_server import Faults, StubServer

pytestmark = pytest.mark.llama

SECRET = "sk-real-server-7d3e91"
QUESTIONS = ["What is the capital of France?", "What colour is the sky?", "How many legs does a spider have?"]


@pytest.mark.timeout(180)  # 23-43 s measured on a busy 2-core machine
def test_chain_with_join_runs_end_to_end_on_a_real_server(run_dir: Path, llama_server: str) -> None:
    register_engine("remote", backend="openai", model="smollm2", base_url=llama_server, max_concurrency=2)
    result = join_chain("remote", max_tokens=64).run(
        [Question(text=q) for q in QUESTIONS], output_dir=run_dir
    )

    flat, failures = assert_every_record_accounted_for(run_dir, 3)
    assert failures == [], failures
    for row in flat:  # every output validates against its step's model
        Answer(answer=row["qa.answer"], confidence=row["qa.confidence"])
        Translation(translated=row["french.translated"])
        Translation(translated=row["spanish.translated"])
        Summary(summary=row["summary.summary"])
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["engines"]["remote"]["dialect"] == "json_object"  # auto: the server refuses json_schema
    assert meta["tokens"]["by_step"]["qa"]["completion"] > 0
    assert result.counts["records_out"] == 3


@pytest.mark.timeout(180)  # 16-45 s measured on a busy 2-core machine
def test_faults_in_front_of_a_real_server_lose_nothing(
    run_dir: Path, llama_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REAL_TEST_KEY", SECRET)
    faults = Faults(
        rate_429=0.1, rate_500=0.1, rate_slow=0.05, rate_drop=0.1, retry_after="1", slow_seconds=6, seed=3
    )
    with StubServer(upstream=llama_server, faults=faults, api_key=SECRET) as proxy:
        register_engine(
            "remote",
            backend="openai",
            model="smollm2",
            base_url=proxy.base_url,
            api_key_env="REAL_TEST_KEY",
            dialect="json_object",
            max_concurrency=2,
            timeout=5,
            max_retries=3,
            backoff_base=0.1,
        )
        join_chain("remote", max_tokens=64).run([Question(text=q) for q in QUESTIONS * 2], output_dir=run_dir)

    flat, failures = assert_every_record_accounted_for(run_dir, 6)
    assert sum(proxy.stats[k] for k in ("429", "500", "slow", "drop")) > 0
    # A fault fails a record only once its retries are spent (1 + max_retries attempts); the small
    # model may also miss the schema after its re-asks. Nothing else may fail a record.
    for failure in failures:
        if failure["error_type"] == "engine_error":
            assert "after 4 attempt(s)" in failure["message"], failure
        else:
            assert failure["error_type"] == "invalid_output", failure
    engine = json.loads((run_dir / "metadata.json").read_text())["engines"]["remote"]
    assert engine["http_retries"] > 0, engine  # the faults were retried, not given up at once
    assert proxy.stats["ok"] > 0 and flat
    qa_ids = [r["_id"] for r in read_jsonl(run_dir / "qa")]
    assert len(qa_ids) == len(set(qa_ids))
    assert_secret_nowhere(run_dir, SECRET)


@pytest.mark.timeout(180)
def test_a_union_step_answers_a_variant_through_a_real_server(run_dir: Path, llama_server: str) -> None:
    """The union's schema (anyOf at the root, a discriminator) goes through the server's structured
    output as it does through the embedded grammar: every answer is one of the variants."""
    from typing import Annotated

    from pydantic import Field
    from tests.runtime.test_control_flow_llama import Cat, Dog

    from chainette import Chain, Router, SamplingParams, Step, apply

    register_engine("remote", backend="openai", model="smollm2", base_url=llama_server, max_concurrency=2)
    pet = Step(
        id="pet",
        input_model=Question,
        output_model=Annotated[Cat | Dog, Field(discriminator="kind")],
        engine_name="remote",
        sampling=SamplingParams(temperature=0, max_tokens=48),
        system_prompt="Describe the pet as a cat or a dog.",
        user_prompt="{{ text }}",
    )
    router = Router("by_kind", {Cat: apply(lambda c: c, id="cats"), Dog: apply(lambda d: d, id="dogs")})
    result = Chain("pets", [pet, router]).run(
        [Question(text="A cat called Tom."), Question(text="A dog called Rex.")], output_dir=run_dir
    )
    flat, failures = assert_every_record_accounted_for(run_dir, 2)
    assert failures == [], failures
    for row in flat:
        variant = Cat if row["pet.kind"] == "cat" else Dog
        variant.model_validate({k.removeprefix("pet."): v for k, v in row.items() if k.startswith("pet.")})
        assert row["by_kind.kind"] == row["pet.kind"]
    assert result.counts["records_out"] == 2
