"""Records never wait for their siblings: each goes through a stage on its own, under one bound on
records in flight, and is written when it is done (``runtime/stages.py``, ``runtime/coalesce.py``)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from pydantic import BaseModel
from tests.helpers import (
    Answer,
    Question,
    assert_every_record_accounted_for,
    ledger_keys,
    load_module,
    read_jsonl,
)

from chainette import Branch, Chain, ChatRequest, Loop, Router, Step, apply, register_engine
from chainette.engines import registry
from chainette.engines.fake import FakeEngine
from chainette.runtime.records import Record
from chainette.runtime.stages import REORDER


def slow_if(word: str, seconds: float) -> Any:
    """A fake engine's per-request latency: ``seconds`` for a prompt containing ``word``, else none."""
    return lambda request: seconds if word in request.messages[-1]["content"] else 0.0


def qa(engine: str = "lat") -> Step:
    return Step(
        id="qa", input_model=Question, output_model=Answer, engine_name=engine, user_prompt="{{ text }}"
    )


def test_a_fast_record_is_written_before_a_slow_one_of_the_same_chunk_finishes(run_dir: Path) -> None:
    register_engine("lat", backend="fake", latency=slow_if("slow", 1.0), max_batch_size=1)
    texts = ["slow one", *(f"fast {i}" for i in range(9))]
    result = Chain("c", [qa()], batch_size=64).run(
        [Question(text=t) for t in texts], output_dir=run_dir, ordered=False
    )
    rows = read_jsonl(run_dir / "flattened")
    # one chunk of 10: the nine fast records went on (and were written) while the slow one waited
    assert [r["input.text"] for r in rows][-1] == "slow one" and rows[-1]["_index"] == 0
    assert sorted(r["_index"] for r in rows) == list(range(10)) and result.counts["failures"] == 0
    # by default rows are written in input order: the fast ones wait (only their rows, in the
    # reorder window) for the slow one; its work started with theirs, not after
    started: dict[str, float] = {}

    def note(request: ChatRequest) -> float:
        started[request.messages[-1]["content"]] = time.monotonic()
        return 1.0 if "slow" in request.messages[-1]["content"] else 0.0

    register_engine("lat", backend="fake", latency=note, max_batch_size=1)
    again = Chain("c", [qa()], batch_size=64).run(
        [Question(text=t) for t in texts], output_dir=run_dir.parent / "o", cache="off"
    )
    assert [r["input.text"] for r in again.flattened()] == texts
    assert max(started.values()) - min(started.values()) < 0.9  # all sent before the slow one answered


class Text(BaseModel):
    text: str


def grow_step() -> Step:
    return Step(id="grow", input_model=Text, output_model=Text, engine_name="echo", user_prompt="{{ text }}")


def test_a_loops_passes_and_stop_reasons_do_not_depend_on_batch_size_under_a_deadline(run_dir: Path) -> None:
    # every pass of "slow" takes 1 s, the others none; deadline 1.5 s; stop after 3 passes.
    # In lockstep, the fast records of slow's chunk waited for it and hit the deadline too.
    register_engine(
        "echo",
        backend="fake",
        latency=slow_if("slow", 1.0),
        max_batch_size=1,
        responder=lambda r: {"text": r.messages[-1]["content"] + "+"},
    )
    texts = ["slow", "a", "b", "c"]

    def outcome(batch_size: int) -> dict[str, tuple[int, str]]:
        loop = Loop(
            "l", grow_step(), until=lambda t: t.text.count("+") >= 3, deadline_s=1.5, max_iterations=10
        )
        result = Chain("c", [loop], batch_size=batch_size).run(
            [Text(text=t) for t in texts], output_dir=run_dir / str(batch_size), cache="off"
        )
        rows = read_jsonl(run_dir / str(batch_size) / "flattened")
        assert result.counts["records_out"] == 4
        return {r["input.text"]: (r["l.iterations"], r["l.stop_reason"]) for r in rows}

    one, many = outcome(1), outcome(64)
    assert one == many
    assert many == {"slow": (2, "deadline"), "a": (3, "until"), "b": (3, "until"), "c": (3, "until")}


class Counting(FakeEngine):
    """A fake back-end that notes how many requests it has in hand at once."""

    now: ClassVar[int] = 0
    most: ClassVar[int] = 0

    async def generate(self, requests: Any) -> Any:
        Counting.now += len(requests)
        Counting.most = max(Counting.most, Counting.now)
        try:
            await anyio.sleep(0.02)
            return await super().generate(requests)
        finally:
            Counting.now -= len(requests)


def test_records_in_flight_never_pass_the_bound_and_fill_it(run_dir: Path) -> None:
    registry.BACKENDS["counting_inflight"] = f"{__name__}:Counting"
    try:
        register_engine("lat", backend="counting_inflight", max_concurrency=64, max_batch_size=1)
        Counting.now = Counting.most = 0
        alive: list[int] = []

        def census(a: Answer) -> Answer:
            # a few samples as records finish (the records in flight store their answers in one
            # ledger put, so they may all finish while no request is out)
            if len(alive) < 12:
                alive.append(sum(1 for o in gc.get_objects() if type(o) is Record))
            return a

        chain = Chain("c", [qa(), apply(census)], batch_size=64)
        result = chain.run([Question(text=f"q{i}") for i in range(400)], output_dir=run_dir, max_in_flight=8)
        assert result.counts["records_out"] == 400
        assert Counting.most == 8  # the engine allows 64: the bound on records is what holds them
        assert result.metadata["in_flight"] == {"limit": 8, "peak": 8}
        # memory: the records alive are those in flight and in the streams (a chunk of 64 read
        # ahead, the buffers), not the input's 400
        assert alive and max(alive) <= 8 + 64 * 6, alive
    finally:
        registry.BACKENDS.pop("counting_inflight", None)


def test_a_bad_max_in_flight_is_refused(run_dir: Path) -> None:
    register_engine("lat", backend="fake")
    with pytest.raises(ValueError, match="max_in_flight must be an integer >= 1"):
        Chain("c", [qa()]).run([Question(text="q")], output_dir=run_dir, max_in_flight=0)


def test_the_default_bound_keeps_every_engine_full(run_dir: Path) -> None:
    register_engine("lat", backend="fake", max_concurrency=300)
    result = Chain("c", [qa()]).run([Question(text="q")], output_dir=run_dir)
    assert result.metadata["in_flight"]["limit"] == 600  # 2 x the largest max_concurrency (> 256)


def test_the_default_bound_grows_with_the_steps_a_record_goes_through(run_dir: Path) -> None:
    # a record holds its slot through each request in turn: 3 steps need 3 x the records of one
    register_engine("lat", backend="fake", max_concurrency=128)

    def step(step_id: str, model: type[BaseModel]) -> Step:
        return Step(id=step_id, input_model=model, output_model=Answer, engine_name="lat", user_prompt="x")

    chain = Chain("c", [step("a", Question), step("b", Answer), step("c", Answer)])
    result = chain.run([Question(text="q")], output_dir=run_dir / "three")
    assert result.metadata["in_flight"]["limit"] == 768  # 2 x 128 x 3 steps
    six = Chain("c", [step("a", Question)] + [step(f"s{i}", Answer) for i in range(5)])
    assert six.run([Question(text="q")], output_dir=run_dir / "six").metadata["in_flight"]["limit"] == 1024
    one = Chain("c", [qa()]).run([Question(text="q")], output_dir=run_dir / "one")
    assert one.metadata["in_flight"]["limit"] == 256  # one step: 2 x 128, as before


CHAIN_FILE = """
import sys
from pydantic import BaseModel, Field
from chainette import Chain, Step, register_engine

class Question(BaseModel):
    text: str

class Answer(BaseModel):
    answer: str = Field(max_length=80)
    confidence: float

def build(latency=None):
    # odd questions take a minute (killed before they are answered), even ones none
    slow = latency if latency is not None else (lambda r: 60.0 if r.messages[-1]["content"].endswith("odd") else 0.0)
    register_engine("lat", backend="fake", latency=slow, max_batch_size=1)
    step = Step(id="qa", input_model=Question, output_model=Answer, engine_name="lat", user_prompt="{{ text }}")
    return Chain("c", [step], batch_size=4)

def inputs():
    return [Question(text=f"question {i} " + ("odd" if i % 2 else "even")) for i in range(12)]

if __name__ == "__main__":
    build().run(inputs(), sys.argv[1], ledger=sys.argv[2], resume=True)
"""


@pytest.mark.timeout(120)
def test_sigkill_with_answers_out_of_order_then_resume_is_exact(tmp_path: Path) -> None:
    chain_file = tmp_path / "crash_chain.py"
    chain_file.write_text(CHAIN_FILE)
    run_dir, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen([sys.executable, str(chain_file), str(run_dir), str(ledger)], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(ledger_keys(ledger)) < 6:  # every even answer, each beside an odd one in flight
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no progress within 60 s"
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    paid = ledger_keys(ledger)
    assert len(paid) == 6  # the even ones, answered out of input order; the odd ones never

    module = load_module(chain_file)
    sent: list[str] = []

    def quick(request: ChatRequest) -> float:
        sent.append(request.messages[-1]["content"])
        return 0.0

    resumed = module.build(latency=quick).run(module.inputs(), run_dir, ledger=ledger, resume=True)
    cache = resumed.metadata["cache"]
    assert cache["hits"] == 6 and cache["sent"] == 6  # nothing answered is sent again
    assert sorted(sent) == sorted(f"question {i} odd" for i in range(1, 12, 2))
    flat, failures = assert_every_record_accounted_for(run_dir, 12)
    assert failures == [] and sorted(r["_index"] for r in flat) == list(range(12))  # nothing lost, once each
    reference = module.build(latency=lambda r: 0.0).run(
        module.inputs(), tmp_path / "ref", ledger=tmp_path / "fresh.sqlite"
    )
    key = lambda rows: sorted(rows, key=lambda r: r["_index"])  # noqa: E731
    assert key(flat) == key(read_jsonl(reference.path / "flattened"))


class Scored(BaseModel):
    score: int


def test_in_input_order_memory_stays_flat_when_records_finish_faster_than_rows_are_handed_on(
    run_dir: Path,
) -> None:
    # a router then two branches joined back, no-op functions (the routing section of
    # benchmarks/control_flow.py): records finish at once, in order, one after another. Each
    # finished record's task queued on the in-order hand-on's lock once, so the tasks alive (each
    # holding its record) grew with the input, past the window that bounds records in flight.
    tasks: list[int] = []
    records: list[int] = []
    calls = 0

    def census(s: Scored) -> Scored:
        nonlocal calls
        calls += 1
        if calls % 400 == 0:
            alive = Counter(type(o) for o in gc.get_objects())  # (this may run on a thread)
            tasks.append(alive[asyncio.Task])
            records.append(alive[Record])
        return s

    def same(s: Scored) -> Scored:
        return s

    route = Router(
        "route",
        {"low": apply(same, id="low"), "high": apply(same, id="high")},
        by=lambda s: "low" if s.score < 50 else "high",
    )
    chain = Chain(
        "c", [route, [Branch("left", [apply(census)]).join("l"), Branch("right", [apply(same)]).join("r")]]
    )
    n, limit = 8000, 32
    result = chain.run([Scored(score=i % 100) for i in range(n)], output_dir=run_dir, max_in_flight=limit)
    assert result.counts["records_out"] == n and [
        r["_index"] for r in read_jsonl(run_dir / "flattened")
    ] == list(range(n))
    assert len(tasks) == n // 400
    # the tasks alive: a record in flight and its two branches each, the run's own few; a
    # finished record's task has ended, whether or not its row was handed on yet
    assert max(tasks) <= 3 * limit + 16, tasks
    # the records alive: in flight or finished and waiting for their turn (the window), with
    # their branch forks; a chunk of 64 read ahead and in each stream's buffer
    window = limit * (1 + REORDER)
    assert max(records) <= 3 * window + 64 * 6, records


@pytest.mark.timeout(60)
def test_branches_that_wait_still_run_together_where_sync_ones_share_a_task(run_dir: Path) -> None:
    # each branch of the record waits for the other to have started: run one after the other
    # (as sync-only branches now are, with no task each), the first would wait for ever
    started: dict[int, dict[str, anyio.Event]] = {}

    def events(s: Scored) -> dict[str, anyio.Event]:
        return started.setdefault(s.score, {"a": anyio.Event(), "b": anyio.Event()})

    async def a(s: Scored) -> Scored:
        events(s)["a"].set()
        await events(s)["b"].wait()
        return s

    async def b(s: Scored) -> Scored:
        events(s)["b"].set()
        await events(s)["a"].wait()
        return s

    def same(s: Scored) -> Scored:
        return s

    chain = Chain(
        "c",
        [
            [Branch("x", [apply(a)]).join("ja"), Branch("y", [apply(b)]).join("jb")],
            [Branch("p", [apply(same, id="p1")]).join("jp"), Branch("q", [apply(same, id="q1")]).join("jq")],
        ],
    )
    result = chain.run([Scored(score=i) for i in range(50)], output_dir=run_dir)
    assert result.counts["records_out"] == 50 and result.counts["failures"] == 0
    assert {r["ja.score"] - r["jq.score"] for r in read_jsonl(run_dir / "flattened")} == {0}


def test_a_ray_worker_hands_each_record_back_when_done_and_keeps_the_engines_for_the_next_chunk() -> None:
    """What a Ray actor runs (``ChainWorker.run_chunk``, here in this process): each record of a
    chunk on its own, handed back as soon as it is done (a fast record in an earlier part than its
    slow sibling, with its own rows and counters), and the engines stay up after the chunk (the
    worker runs more chunks)."""
    from chainette.engines.registry import get_engine_config
    from chainette.runtime.ray_worker import ChainWorker
    from chainette.runtime.records import dump

    register_engine("lat", backend="fake", latency=slow_if("slow", 0.3), max_batch_size=1)
    chain = Chain("c", [qa()])
    worker = ChainWorker(chain, [get_engine_config("lat")], None, "off")

    async def main() -> list[list[tuple[str, str]]]:
        parts = []
        for k, texts in enumerate((["slow 0", "fast 1"], ["fast 2"])):
            sent = [(f"r{k}{i}", i, dump(Question(text=t)), None, None) for i, t in enumerate(texts)]
            async for part in worker.run_chunk(sent):
                assert [row["_id"] for row in part.flattened] == part.done
                assert len(part.rows) == len(part.done) and not part.failures
                assert part.stats["qa"].records_out == len(part.done)
                parts.append([(row["_id"], row["input.text"]) for row in part.flattened])
            assert worker._ctx is not None and worker._ctx.broker.running == ["lat"]  # kept up
        await worker.close()
        return parts

    assert anyio.run(main) == [[("r01", "fast 1")], [("r00", "slow 0")], [("r10", "fast 2")]]
