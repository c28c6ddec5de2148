"""Interrupting a run for real: Ctrl-C on ``chainette run``, and cancelling ``Chain.arun``.

The folder left behind says ``"status": "interrupted"``, and ``--resume`` finishes it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel
from tests.helpers import read_jsonl

from chainette import Chain, apply

CHAINETTE = str(Path(sys.executable).parent / "chainette")

CHAIN_MODULE = """
import os
from pydantic import BaseModel
from chainette import Chain, Step, register_engine

register_engine("slow", backend="fake", latency=float(os.environ["FAKE_LATENCY"]))

class Question(BaseModel):
    text: str

class Answer(BaseModel):
    answer: str

chain = Chain("slow", [Step(id="qa", input_model=Question, output_model=Answer, engine_name="slow",
                            user_prompt="Q: {{ text }}")], batch_size=1)
"""

N = 100


def rows(path: Path) -> int:
    return sum(1 for f in path.glob("*.jsonl") for line in f.read_text().splitlines() if line.strip())


def test_ctrl_c_stops_the_run_promptly_and_resume_finishes_it(tmp_path: Path) -> None:
    (tmp_path / "chain.py").write_text(CHAIN_MODULE)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"q{i}"}) + "\n" for i in range(N)))
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    args = [CHAINETTE, "run", "chain.py:chain", "-i", "in.jsonl", "-o", "run", "--ledger", "ledger.sqlite"]
    # 0.1 s per record, one record in flight at a time: 10 s if nobody stops it
    env = {**os.environ, "FAKE_LATENCY": "0.1"}
    proc = subprocess.Popen(
        [*args, "--max-in-flight", "1", "--quiet"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "flattened").is_dir() or rows(run_dir / "flattened") == 0:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no row written within 60 s"
            time.sleep(0.05)  # polling another process's files: there is no event to wait on
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 130, stderr
    assert took < 5, f"the run took {took:.1f} s to stop after Ctrl-C"
    assert f"Interrupted. Partial results are in {Path('run')}" in stderr
    assert "Traceback" not in stderr, stderr
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "interrupted", meta
    done = meta["counts"]["records_out"]
    assert 0 < done < N and rows(run_dir / "flattened") == done  # the rows written match the metadata

    with sqlite3.connect(ledger) as db:
        (paid,) = db.execute("SELECT count(*) FROM completions").fetchone()
    assert paid >= done

    env["FAKE_LATENCY"] = "0"
    resumed = subprocess.run(
        [*args, "--resume", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "completed" and meta["resumed_from"]["status"] == "interrupted"
    assert meta["counts"] == {"records_in": N, "records_out": N, "failures": 0, "filtered": 0}
    # what the interrupted run was answered is not sent again; only the rest is
    assert (meta["cache"]["hits"], meta["cache"]["sent"]) == (paid, N - paid)
    ids = [r["_id"] for r in read_jsonl(run_dir / "flattened")]
    assert len(ids) == len(set(ids)) == N


class Num(BaseModel):
    x: int


def test_cancelling_arun_leaves_an_interrupted_run_folder(run_dir: Path) -> None:
    def numbers() -> Iterator[Num]:
        yield from (Num(x=i) for i in range(1000))

    async def main() -> bool:
        reached = anyio.Event()

        async def step(n: Num) -> Num:
            if n.x == 10:
                reached.set()
            await anyio.sleep(0.001)
            return n

        with anyio.fail_after(30), anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_when_reached() -> None:
                    await reached.wait()
                    scope.cancel()

                tg.start_soon(cancel_when_reached)
                await Chain("c", [apply(step)], batch_size=2).arun(numbers(), output_dir=run_dir)
                pytest.fail("the run finished: it was not cancelled")
        return scope.cancelled_caught

    assert anyio.run(main)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "interrupted", meta
    assert meta["error"].startswith("CancelledError")
    assert 10 <= meta["counts"]["records_in"] < 1000
    assert rows(run_dir / "flattened") == meta["counts"]["records_out"] < 1000
