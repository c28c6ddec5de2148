"""SIGKILL in the middle of a loop, then resume: no request the ledger holds is sent again (each
pass has its own keys), and the folder equals an uninterrupted run's, pass columns included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import ledger_keys, load_module, read_jsonl

CHAIN_FILE = """
import sys
from pydantic import BaseModel, Field
from chainette import Chain, Loop, Step, register_engine

class Topic(BaseModel):
    topic: str

class Draft(BaseModel):
    text: str = Field(max_length=40)

class Critique(BaseModel):
    feedback: str = Field(max_length=40)
    score: int = Field(ge=0, le=9)

TOPICS = ["sun", "rivers", "owls", "glaciers", "bread", "volcanoes", "bees", "tides"]

def build(latency=0.0):
    # one request at a time, slowly, in the killed run; the options are throughput knobs, so the
    # resumed run (latency 0) has the same ledger keys
    register_engine("slow", backend="fake", latency=latency, max_batch_size=1, max_concurrency=1)
    writer = Step(id="writer", input_model=Topic, output_model=Draft, engine_name="slow",
                  user_prompt="Write on {{ input.topic }}.{% if critic is defined %} {{ critic.feedback }}{% endif %}")
    critic = Step(id="critic", input_model=Draft, output_model=Critique, engine_name="slow",
                  user_prompt="Rate: {{ text }}")
    loop = Loop("refine", [writer, critic], until=lambda c: c.score >= 7, max_iterations=3)
    return Chain("refine", [loop], batch_size=2)

def inputs():
    return [Topic(topic=t) for t in TOPICS]

if __name__ == "__main__":
    build(latency=0.15).run(inputs(), sys.argv[1], ledger=sys.argv[2], resume=True)
"""


def rows(path: Path) -> list[str]:
    """The rows of a folder as sorted JSON lines (a loop writes one row per pass per record)."""
    found = sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(path))
    assert len(found) == len(set(found)), f"duplicate rows in {path}"
    return found


@pytest.mark.timeout(180)
def test_sigkill_mid_loop_then_resume(tmp_path: Path) -> None:
    chain_file = tmp_path / "loop_crash_chain.py"
    chain_file.write_text(CHAIN_FILE)
    module = load_module(chain_file)
    reference = module.build().run(module.inputs(), tmp_path / "ref", ledger=tmp_path / "fresh.sqlite")
    total = reference.metadata["cache"]["sent"]
    passes = [r["refine.iterations"] for r in reference.flattened()]
    assert total == 2 * sum(passes) and max(passes) > 1  # some records loop more than once

    run_dir, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen([sys.executable, str(chain_file), str(run_dir), str(ledger)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(ledger_keys(ledger)) < total // 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    paid = ledger_keys(ledger)
    assert total // 2 <= len(paid) < total  # killed in the middle

    resumed = module.build().run(module.inputs(), run_dir, ledger=ledger, resume=True)
    cache: dict[str, Any] = resumed.metadata["cache"]
    assert cache["hits"] == len(paid)  # every answer paid for came from the ledger
    assert len(ledger_keys(ledger)) == len(paid) + cache["sent"] == total
    assert resumed.metadata["resumed_from"]["status"] == "running"
    assert resumed.counts == reference.counts
    for folder in ("writer", "critic", "flattened"):
        assert rows(run_dir / folder) == rows(tmp_path / "ref" / folder)
    assert read_jsonl(run_dir / "failures.jsonl") == read_jsonl(tmp_path / "ref" / "failures.jsonl")
