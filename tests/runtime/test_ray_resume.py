"""A Ray run's driver killed mid-run, then ``--resume``: nothing the ledger holds is sent again,
and the folder ends as an uninterrupted run's (every input once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tests.helpers import ledger_keys, load_module, read_jsonl

from chainette.engines.stub_server import Faults, StubServer

N = 24

CHAIN_FILE = f"""
import sys
from pydantic import BaseModel
from chainette import Chain, Step, register_engine

class Topic(BaseModel):
    topic: str

class Fact(BaseModel):
    fact: str

def build(base_url):
    register_engine("stub", backend="openai", model="m", base_url=base_url)
    step = Step(id="fact", input_model=Topic, output_model=Fact, engine_name="stub",
                user_prompt="One fact about {{{{ topic }}}}.")
    return Chain("ray facts", [step], batch_size=2)

N = {N}

def inputs():
    return [Topic(topic=f"topic {{i}}") for i in range(N)]

if __name__ == "__main__":
    build(sys.argv[3]).run(inputs(), sys.argv[1], ledger=sys.argv[2], resume=True,
                           executor="ray", replicas=2, workers=1)
"""


@pytest.mark.timeout(420)
def test_a_killed_driver_then_resume_sends_nothing_already_answered(tmp_path: Path) -> None:
    chain_file = tmp_path / "ray_facts.py"
    chain_file.write_text(CHAIN_FILE)
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=0.3)) as server:
        proc = subprocess.Popen(
            [sys.executable, str(chain_file), str(run_dir), str(ledger), server.base_url], env=env
        )
        family: list[psutil.Process] = []
        try:
            deadline = time.monotonic() + 240
            while len(ledger_keys(ledger)) < 6:
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "no progress within 240 s"
                family = psutil.Process(proc.pid).children(recursive=True)
                time.sleep(0.05)
            family = psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
            # the local Ray instance the driver started goes down with it; whatever is left is ended
            _, alive = psutil.wait_procs(family, timeout=60)
            for leftover in alive:
                leftover.kill()
        assert proc.returncode == -signal.SIGKILL
        paid = ledger_keys(ledger)
        assert 6 <= len(paid) < N  # killed in the middle
        received_before = server.stats["requests"]

        module = load_module(chain_file)
        resumed = module.build(server.base_url).run(
            module.inputs(), run_dir, ledger=ledger, resume=True, executor="ray", replicas=2
        )
        sent_on_resume = server.stats["requests"] - received_before

    cache = resumed.metadata["cache"]
    # every answer the ledger held came from it; the stub got only what it did not hold
    assert cache["hits"] == len(paid)
    assert sent_on_resume == cache["sent"] == N - len(paid)
    assert len(ledger_keys(ledger)) == N
    assert resumed.metadata["resumed_from"]["status"] == "running"  # what the killed driver left
    assert resumed.metadata["executor"] == "ray"
    rows = read_jsonl(run_dir / "flattened")
    assert sorted(r["_index"] for r in rows) == list(range(N))  # every input once
    assert len({r["_id"] for r in read_jsonl(run_dir / "fact")}) == len(read_jsonl(run_dir / "fact")) == N
    assert read_jsonl(run_dir / "failures.jsonl") == []
