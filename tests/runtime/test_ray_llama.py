"""A step on the real embedded engine through Ray: the actor loads the model, answers land in the
ledger under the keys a local run uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from tests.helpers import read_jsonl

from chainette import Chain, SamplingParams, Step, register_engine

pytestmark = pytest.mark.llama


class Topic(BaseModel):
    topic: str


class Fact(BaseModel):
    fact: str = Field(max_length=60)


@pytest.mark.timeout(600)  # a Ray instance, then the model loaded in its actor, on 2 busy cores
def test_a_llama_step_runs_in_a_ray_actor_and_a_local_rerun_sends_nothing(tmp_path: Path) -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024, n_threads=2)
    step = Step(
        id="fact",
        input_model=Topic,
        output_model=Fact,
        engine_name="local",
        system_prompt="You state one short fact.",
        user_prompt="One fact about {{ topic }}.",
        sampling=SamplingParams(temperature=0, max_tokens=40),
    )
    chain = Chain("ray llama", [step])
    inputs = [Topic(topic=t) for t in ("the sun", "owls", "bread")]
    ledger = tmp_path / "ledger.sqlite"

    on_ray = chain.run(inputs, tmp_path / "ray", ledger=ledger, executor="ray", replicas=1)
    assert on_ray.metadata["status"] == "completed"
    assert on_ray.metadata["engines"]["local"]["backend"] == "llama_cpp"  # started in the actor
    assert on_ray.metadata["cache"]["sent"] == 3 == on_ray.counts["records_out"]
    facts = read_jsonl(tmp_path / "ray" / "fact")
    assert all(Fact.model_validate({"fact": r["fact"]}) for r in facts)

    local = chain.run(inputs, tmp_path / "local", ledger=ledger)
    assert local.metadata["cache"]["hits"] == 3 and local.metadata["cache"]["sent"] == 0
    assert sorted(read_jsonl(tmp_path / "local" / "flattened"), key=lambda r: r["_id"]) == sorted(
        read_jsonl(tmp_path / "ray" / "flattened"), key=lambda r: r["_id"]
    )
