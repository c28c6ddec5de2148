"""Processes sharing one ledger file: each distinct request is sent once, whoever sends it.

Real processes (subprocesses), a real SQLite ledger and the stub server, which counts every chat
request it receives: three runs over the same requests send each distinct one once, and a claim
left by a killed process is taken over once its lease runs out.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import Question, qa_step, read_jsonl

from chainette import Chain, register_engine
from chainette.engines.stub_server import Faults, StubServer

DISTINCT = 60

SCRIPT = """
import random, sys, time
from pathlib import Path
from chainette import Chain, register_engine
from chainette.runtime import requests
from tests.helpers import Question, qa_step

base_url, out, seed, lease, go = sys.argv[1:6]
requests.LEASE_S = float(lease)
register_engine("sync", backend="openai", model="m", base_url=base_url, dialect="json_schema", max_concurrency=8)
chain = Chain("shared qa", [qa_step("sync", prompt="Q: {{ text }}")], batch_size=16)
texts = [f"Question number {i % 60}?" for i in range(120)]  # each distinct question twice
random.Random(int(seed)).shuffle(texts)
Path(out + ".ready").touch()
while not Path(go).exists():  # start together, once every process has imported everything
    time.sleep(0.01)
chain.run([Question(text=t) for t in texts], out)
"""


@pytest.fixture
def script(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    path = tmp_path / "shared_run.py"
    path.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src"), *sys.path])}
    yield path, env


def start(
    script: tuple[Path, dict[str, str]], stub: StubServer, out: Path, seed: int, lease: float, go: Path
) -> subprocess.Popen[bytes]:
    path, env = script
    return subprocess.Popen(
        [sys.executable, str(path), stub.base_url, str(out), str(seed), str(lease), str(go)],
        env=env,
        cwd=path.parent,
    )


def wait_for(condition: object, what: str, procs: list[subprocess.Popen[bytes]], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert all(p.poll() in (None, 0) for p in procs), f"a run failed while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.02)


@pytest.mark.timeout(180)
def test_three_processes_on_one_ledger_send_each_distinct_request_once(
    script: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=0.1)) as stub:  # every answer takes 0.1 s
        outs = [tmp_path / f"run{n}" for n in range(3)]
        procs = [start(script, stub, out, seed, 60.0, go) for seed, out in enumerate(outs)]
        try:
            wait_for(lambda: all(Path(f"{out}.ready").exists() for out in outs), "ready runs", procs)
            go.touch()
            for proc in procs:
                assert proc.wait(timeout=120) == 0
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        sent = stub.stats["requests"]
    assert sent == DISTINCT  # 3 x 60 without claims in the ledger: each process sent its own
    answers: dict[str, str] = {}
    for out in outs:
        rows = read_jsonl(out / "flattened")
        assert len(rows) == 120
        for row in rows:  # the same question got the same answer in every process
            assert answers.setdefault(row["input.text"], row["qa.answer"]) == row["qa.answer"]
    assert len(answers) == DISTINCT


@pytest.mark.timeout(180)
def test_a_killed_owners_claims_expire_and_are_taken_over(
    script: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    go.touch()
    ledger = Path(os.environ["CHAINETTE_LEDGER"])
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=5.0)) as stub:  # the owner hangs on its answers
        owner = start(script, stub, tmp_path / "owner", 0, 1.0, go)  # a 1 s lease
        try:
            wait_for(lambda: stub.stats["requests"] >= 8, "requests from the owner", [owner])
            os.kill(owner.pid, signal.SIGKILL)
        finally:
            owner.wait(timeout=30)
        with sqlite3.connect(ledger) as db:
            claimed = db.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
        assert claimed >= 8  # the dead owner's claims are still there, with their leases

        stub.faults = Faults()  # answers come at once now
        before = stub.stats["requests"]
        register_engine("sync", backend="openai", model="m", base_url=stub.base_url, dialect="json_schema")
        chain = Chain("shared qa", [qa_step("sync", prompt="Q: {{ text }}")], batch_size=16)
        texts = [f"Question number {i % 60}?" for i in range(120)]
        result = chain.run([Question(text=t) for t in texts], tmp_path / "taker")
        sent = stub.stats["requests"] - before
    assert result.counts["records_out"] == 120 and result.counts["failures"] == 0
    assert sent == DISTINCT  # the claimed ones taken over (after their lease) and sent once, with the rest
    with sqlite3.connect(ledger) as db:
        # every claim ended with its answer
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == DISTINCT
    assert len(read_jsonl(tmp_path / "taker" / "flattened")) == 120
