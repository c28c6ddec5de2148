"""Counts in failures.jsonl and metadata.json say what happened: attempts made, requests answered."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anyio
from tests.helpers import Question, qa_step, read_jsonl

from chainette import Chain, Step, register_engine
from chainette.engines.stub_server import Faults, StubServer


def qa(engine: str = "remote", max_reasks: int = 2) -> Step:
    return qa_step(engine, prompt="Q: {{ text }}", max_reasks=max_reasks)


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


def test_an_interrupted_run_counts_only_the_requests_answered(run_dir: Path, ledger_path: Path) -> None:
    """Requests queued or in flight when the run is cancelled were not answered: they are not counted."""
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=0.05)) as stub:
        register_engine("remote", backend="openai", model="m", base_url=stub.base_url, max_concurrency=4)
        chain = Chain("c", [qa()], batch_size=16)

        async def main() -> None:
            with anyio.move_on_after(0.6):
                await chain.arun([Question(text=f"q{i}") for i in range(400)], run_dir, workers=4)

        anyio.run(main)
        received = stub.stats["requests"]

    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "interrupted"
    with sqlite3.connect(ledger_path) as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM completions").fetchone()
    requests = meta["nodes"]["qa"]["requests"]
    assert 0 < stored < 400
    # every answer that came back was counted (and committed); nothing else was
    assert requests == stored == meta["cache"]["sent"] == meta["cost"]["by_step"]["qa"]["requests"]
    # the server saw those, plus at most the requests in flight when the run stopped
    assert requests <= received <= requests + 4
