"""The ``openai_batch`` back-end with a real model behind the batch API: the stub's batches forward
each line to llama-cpp-python's server (SmolLM2-135M, on the CPU), so the lines this engine writes
are real chat requests a real server accepts and constrains, and real answers come back through
the result files."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import (
    Answer,
    Question,
    Summary,
    Translation,
    assert_every_record_accounted_for,
    join_chain,
)

from chainette import register_engine
from chainette.engines.stub_server import StubServer

pytestmark = pytest.mark.llama

QUESTIONS = ["What is the capital of France?", "What colour is the sky?", "How many legs does a spider have?"]


@pytest.mark.timeout(240)
def test_a_chain_with_a_join_runs_on_a_real_model_through_the_batch_api(
    tmp_path: Path, llama_server: str
) -> None:
    with StubServer(upstream=llama_server) as proxy:
        register_engine(
            "batch",
            backend="openai_batch",
            model="smollm2",
            base_url=proxy.base_url,
            dialect="json_object",  # what llama-cpp-python's server takes
            poll_interval=0.05,
            poll_max=0.2,
        )
        result = join_chain("batch", max_tokens=64).run(
            [Question(text=q) for q in QUESTIONS], tmp_path / "run"
        )

    flat, failures = assert_every_record_accounted_for(tmp_path / "run", 3)
    assert failures == [], failures
    for row in flat:  # every output validates against its step's model
        Answer(answer=row["qa.answer"], confidence=row["qa.confidence"])
        Translation(translated=row["french.translated"])
        Translation(translated=row["spanish.translated"])
        Summary(summary=row["summary.summary"])
    # the steps' requests went in batches (the join's two branches may share one: qa, the
    # branches, summary), the lines to the real server, whose usage came back
    assert proxy.batches.stats["batches_created"] >= 3 and proxy.stats["requests"] == 0
    assert all(line["body"]["response_format"]["type"] == "json_object" for line in proxy.batches.lines)
    assert result.metadata["tokens"]["by_step"]["qa"]["completion"] > 0
    assert result.metadata["engines"]["batch"]["batches_created"] == proxy.batches.stats["batches_created"]
