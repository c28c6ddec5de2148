"""SIGKILL in the middle of a map (a slow fake engine answering the children), then resume:
nothing the ledger holds is sent again, and the folder equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import ledger_keys, load_module, read_jsonl
from tests.runtime.test_crash_resume import by_id

CHAIN_FILE = """
import sys
from pydantic import BaseModel, Field
from chainette import Chain, Map, Step, register_engine

class Chapter(BaseModel):
    title: str
    paragraphs: list[str]

class Para(BaseModel):
    text: str

class Summary(BaseModel):
    summary: str = Field(max_length=60)

class Synopsis(BaseModel):
    synopsis: str = Field(max_length=120)

def build():
    register_engine("slow", backend="fake", latency=0.15, max_batch_size=2, max_concurrency=1)
    summarise = Step(id="summ", input_model=Para, output_model=Summary, engine_name="slow",
                     user_prompt="{{ input.title }}: {{ text }}")
    synopsis = Step(id="synopsis", input_model=Chapter, output_model=Synopsis, engine_name="slow",
                    user_prompt="{% for s in paras.items %}{{ s.summary }} {% endfor %}")
    paras = Map("paras", summarise, over="paragraphs", child_batch=3, concurrency=2)
    return Chain("chapters", [paras, synopsis], batch_size=2)

def inputs():
    return [Chapter(title=f"chapter {c}", paragraphs=[f"paragraph {c}.{p}" for p in range(4)]) for c in range(6)]

if __name__ == "__main__":
    build().run(inputs(), sys.argv[1], ledger=sys.argv[2], resume=True)
"""

TOTAL = 6 * 4 + 6  # a summary per paragraph, a synopsis per chapter


@pytest.mark.timeout(120)
def test_sigkill_mid_map_then_resume(tmp_path: Path) -> None:
    chain_file = tmp_path / "map_chain.py"
    chain_file.write_text(CHAIN_FILE)
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen([sys.executable, str(chain_file), str(run_dir), str(ledger)], env=env)
    try:
        deadline = time.monotonic() + 90
        while len(ledger_keys(ledger)) < 6:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no progress within 90 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    paid = ledger_keys(ledger)
    assert 6 <= len(paid) < TOTAL  # killed in the middle

    module = load_module(chain_file)
    resumed = module.build().run(module.inputs(), run_dir, ledger=ledger, resume=True)
    cache = resumed.metadata["cache"]
    assert cache["hits"] == len(paid)  # every completed request came from the ledger
    assert len(ledger_keys(ledger)) == len(paid) + cache["sent"] == TOTAL
    assert resumed.metadata["resumed_from"]["status"] == "running"

    reference = module.build().run(module.inputs(), tmp_path / "ref", ledger=tmp_path / "fresh.sqlite")
    assert reference.metadata["cache"]["sent"] == TOTAL
    assert (
        resumed.counts
        == reference.counts
        == {"records_in": 6, "records_out": 6, "failures": 0, "filtered": 0}
    )
    for folder in ("summ", "synopsis", "flattened"):
        assert by_id(run_dir / folder) == by_id(tmp_path / "ref" / folder)
    assert len(by_id(run_dir / "summ")) == 24
    assert read_jsonl(run_dir / "failures.jsonl") == []
