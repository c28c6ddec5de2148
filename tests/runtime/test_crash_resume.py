"""SIGKILL in the middle of a run on the real embedded engine, then resume: nothing paid for is
sent again, nothing is lost or written twice, and the folder equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import ledger_keys, load_module, read_jsonl

pytestmark = pytest.mark.llama

CHAIN_FILE = """
import sys
from pydantic import BaseModel, Field
from chainette import Chain, SamplingParams, Step, register_engine

class Topic(BaseModel):
    topic: str

class Fact(BaseModel):
    fact: str = Field(max_length=60)

TOPICS = ["the sun", "rivers", "owls", "glaciers", "bread", "volcanoes", "bees", "tides", "copper", "maple trees"]

def build():
    register_engine("local", backend="llama_cpp", n_ctx=1024)
    step = Step(id="fact", input_model=Topic, output_model=Fact, engine_name="local",
                system_prompt="You state one short fact.", user_prompt="One fact about {{ topic }}.",
                sampling=SamplingParams(max_tokens=48))
    return Chain("facts", [step], batch_size=2)

def inputs():
    return [Topic(topic=t) for t in TOPICS]

if __name__ == "__main__":
    build().run(inputs(), sys.argv[1], ledger=sys.argv[2], resume=True)
"""


def by_id(path: Path) -> dict[str, dict[str, Any]]:
    rows = read_jsonl(path)
    ids = [r["_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate rows in {path}"
    return {r["_id"]: r for r in rows}


@pytest.mark.timeout(420)  # 12-136 s measured on a busy 2-core machine
def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    chain_file = tmp_path / "crash_chain.py"
    chain_file.write_text(CHAIN_FILE)
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen([sys.executable, str(chain_file), str(run_dir), str(ledger)], env=env)
    try:
        deadline = time.monotonic() + 240
        while len(ledger_keys(ledger)) < 4:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no progress within 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    paid = ledger_keys(ledger)
    assert 4 <= len(paid) < 10  # killed in the middle

    module = load_module(chain_file)
    resumed = module.build().run(module.inputs(), run_dir, ledger=ledger, resume=True)
    cache = resumed.metadata["cache"]
    # every completed request came from the ledger; every request sent was one it did not hold
    assert cache["hits"] == len(paid)
    assert len(ledger_keys(ledger)) == len(paid) + cache["sent"] == 10
    assert resumed.metadata["resumed_from"]["status"] == "running"  # what the killed run left behind

    reference = module.build().run(module.inputs(), tmp_path / "ref", ledger=tmp_path / "fresh.sqlite")
    assert reference.metadata["cache"]["sent"] == 10
    assert resumed.counts == reference.counts
    for folder in ("fact", "flattened"):
        assert by_id(run_dir / folder) == by_id(tmp_path / "ref" / folder)
    assert len(by_id(run_dir / "flattened")) + len(read_jsonl(run_dir / "failures.jsonl")) == 10
