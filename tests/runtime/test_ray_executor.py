"""``executor="ray"``: the same run folder as a local run, from a pool of Ray actors.

One local Ray instance (2 CPUs) serves the module's Ray runs; it is shut down at the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from tests.helpers import (
    Answer,
    Question,
    Summary,
    join_chain,
    ledger_keys,
    qa_step,
    ray_worker_pids,
    read_jsonl,
    start_ray,
)
from typer.testing import CliRunner

from chainette import (
    Chain,
    ChainDefinitionError,
    Loop,
    MissingDependencyError,
    RecordView,
    Step,
    apply,
    register_engine,
)
from chainette.cli import app
from chainette.engines.fake import example_for_schema
from chainette.engines.stub_server import Faults, StubServer
from chainette.graph.stream_ops import Take
from chainette.runtime.executor import run_chain

RAY_TIMEOUT = 300  # a Ray instance and its worker processes on a busy 2-core machine


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = start_ray(num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


def refuse_bad(request: Any) -> Any:
    """The fake engine's usual schema-valid answer, except for a prompt containing "bad" (an error)."""
    if "bad" in request.messages[-1]["content"]:
        raise ValueError("refused")
    digest = hashlib.sha256(request.model_dump_json().encode()).digest()
    return example_for_schema(request.json_schema, random.Random(digest))


def drop_some(summary: Summary, record: RecordView) -> Summary | None:
    """Filters the records whose question ends in 0 or 7."""
    return None if record.input.text.endswith(("0", "7")) else summary


def lines(n: int) -> list[str]:
    """``n`` input lines: questions, some refused by the engine (``bad``), one line not JSON."""
    out = []
    for i in range(n):
        if i == 5:
            out.append("{not json")
        else:
            out.append(json.dumps({"text": f"bad question {i}" if i % 6 == 1 else f"question {i}"}))
    return out


def filtering_join_chain(engine: str) -> Chain:
    """qa → [french, spanish] joined → summary → a filter: failures, filtered and a join."""
    chain = join_chain(engine)
    return Chain("ray join", [*chain.items, apply(drop_some)], batch_size=4)


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = [r["_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a row was written twice"
    return {r["_id"]: r for r in rows}


def assert_same_run(ray_dir: Path, local_dir: Path, n: int) -> dict[str, Any]:
    """The Ray run's folder has the local run's rows (same ids), failures and counts; every input
    is in flattened, failures or filtered exactly once. Returns the Ray run's metadata."""
    ray_meta = json.loads((ray_dir / "metadata.json").read_text())
    local_meta = json.loads((local_dir / "metadata.json").read_text())
    assert ray_meta["executor"] == "ray" and local_meta["executor"] == "local"
    assert ray_meta["status"] == "completed"
    for folder in ("qa", "to_french", "to_spanish", "summary", "flattened"):
        assert by_id(read_jsonl(ray_dir / folder)) == by_id(read_jsonl(local_dir / folder)), folder
    failures = by_id(read_jsonl(ray_dir / "failures.jsonl"))
    assert failures == by_id(read_jsonl(local_dir / "failures.jsonl"))
    assert ray_meta["counts"] == local_meta["counts"]
    assert ray_meta["nodes"] == local_meta["nodes"]
    assert ray_meta["tokens"] == local_meta["tokens"]
    counts = ray_meta["counts"]
    flat = read_jsonl(ray_dir / "flattened")
    assert counts["records_in"] == n == len(flat) + len(failures) + counts["filtered"]
    assert set(by_id(flat)).isdisjoint(failures)
    return dict(ray_meta)


@pytest.mark.timeout(RAY_TIMEOUT)
def test_a_join_chain_on_the_fake_engine_writes_what_a_local_run_writes(
    ray_cluster: Any, tmp_path: Path
) -> None:
    register_engine("fake", backend="fake", responder=refuse_bad)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(lines(24)) + "\n")
    chain = filtering_join_chain("fake")

    ray_run = chain.run(inputs, tmp_path / "ray", executor="ray", replicas=2, workers=2)
    local = chain.run(inputs, tmp_path / "local", ledger=tmp_path / "local.sqlite")

    meta = assert_same_run(ray_run.path, local.path, 24)
    failures = read_jsonl(ray_run.path / "failures.jsonl")
    assert sorted(f["node"] for f in failures) == ["input"] + ["qa"] * 4  # the line, the refusals
    assert meta["counts"]["filtered"] == 4  # questions 0, 10, 17 and 20 (7 was refused)
    assert meta["ray"]["replicas"] == 2 and meta["config"]["executor"] == "ray"
    assert meta["ray"]["worker_processes"] == 2  # both actors ran chunks (6 chunks, 2 × 2 slots)
    assert meta["engines"]["fake"]["backend"] == "fake"
    assert meta["cache"]["sent"] == local.metadata["cache"]["sent"] > 0
    deadline = time.monotonic() + 30
    while ray_worker_pids():  # the run ended its actors
        assert time.monotonic() < deadline, "the workers outlived the run"
        time.sleep(0.1)


@pytest.mark.timeout(RAY_TIMEOUT)
def test_a_join_chain_on_the_stub_server_writes_what_a_local_run_writes(
    ray_cluster: Any, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(lines(16)) + "\n")
    chain = filtering_join_chain("stub")
    with StubServer() as server:
        register_engine("stub", backend="openai", model="m", base_url=server.base_url)
        ray_run = chain.run(inputs, tmp_path / "ray", executor="ray", replicas=2)
        sent_by_ray = server.stats["requests"]
        local = chain.run(inputs, tmp_path / "local", ledger=tmp_path / "local.sqlite")

    meta = assert_same_run(ray_run.path, local.path, 16)
    assert read_jsonl(ray_run.path / "failures.jsonl")[0]["node"] == "input"
    assert meta["counts"]["filtered"] == 3  # questions 0, 7 and 10
    # 15 good inputs × 4 steps, one request each, every answer in the run's ledger
    assert sent_by_ray == meta["cache"]["sent"] == 60 == len(ledger_keys(Path(meta["cache"]["ledger"])))


@pytest.mark.timeout(RAY_TIMEOUT)
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(ray_cluster: Any, tmp_path: Path) -> None:
    n = 16
    chain = Chain("slow qa", [qa_step("stub")], batch_size=2)  # 8 chunks, 4 out at a time
    ledger = tmp_path / "ledger.sqlite"
    killed: list[int] = []
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=1.0)) as server:
        register_engine("stub", backend="openai", model="m", base_url=server.base_url)

        async def kill_a_worker_once_busy() -> None:
            # both workers are up and chunks are in flight (the stub's thread counts: no event)
            while server.stats["requests"] < 4 or len(pids := ray_worker_pids()) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        async def main() -> Any:
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_a_worker_once_busy)
                result = await run_chain(
                    chain,
                    [Question(text=f"q{i}") for i in range(n)],
                    tmp_path / "run",
                    ledger=ledger,
                    executor="ray",
                    replicas=2,
                    workers=2,
                )
            return result

        result = anyio.run(main)
        received = server.stats["requests"]

    assert killed and killed[0] not in ray_worker_pids()
    meta = result.metadata
    assert meta["status"] == "completed"
    assert len(by_id(read_jsonl(result.path / "qa"))) == n
    assert len(by_id(read_jsonl(result.path / "flattened"))) == n == result.counts["records_out"]
    assert read_jsonl(result.path / "failures.jsonl") == []
    # the rerun chunks took the dead worker's stored answers from the ledger, or sent them again
    cache = meta["cache"]
    assert cache["sent"] + cache["hits"] == n
    assert received >= cache["sent"] and len(ledger_keys(ledger)) == n
    assert meta["nodes"]["qa"]["records_out"] == n  # counted once: from the results that came back


@pytest.mark.timeout(RAY_TIMEOUT)
def test_one_prompt_in_every_record_is_sent_at_most_once_per_worker(ray_cluster: Any, tmp_path: Path) -> None:
    """In-flight de-duplication is per worker; across workers the ledger answers once one has
    stored the answer. So a request is sent at most once per worker, and the ledger keeps one."""
    n = 24
    chain = Chain("same prompt", [qa_step("stub")], batch_size=2)  # 12 chunks on 2 workers
    ledger = tmp_path / "ledger.sqlite"
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=0.3)) as server:
        register_engine("stub", backend="openai", model="m", base_url=server.base_url)
        result = chain.run(
            [Question(text="the same question")] * n,
            tmp_path / "run",
            ledger=ledger,
            executor="ray",
            replicas=2,
            workers=2,
        )
        received = server.stats["requests"]
    cache = result.metadata["cache"]
    assert 1 <= received == cache["sent"] <= 2
    assert cache["sent"] + cache["hits"] + cache["deduped"] == n
    assert len(ledger_keys(ledger)) == 1
    assert len(by_id(read_jsonl(result.path / "flattened"))) == n


@pytest.mark.timeout(RAY_TIMEOUT)
def test_the_cli_runs_a_chain_file_on_ray(ray_cluster: Any, tmp_path: Path) -> None:
    """A chain file given by path (not importable by name in a worker) runs unchanged."""
    chain_file = tmp_path / "ray_cli_chain.py"
    chain_file.write_text(
        "from pydantic import BaseModel\n"
        "from chainette import Chain, Step, apply, register_engine\n"
        "register_engine('fake', backend='fake')\n"
        "class Question(BaseModel):\n    text: str\n"
        "class Answer(BaseModel):\n    answer: str\n"
        "def shout(answer: Answer) -> Answer:\n    return Answer(answer=answer.answer.upper())\n"
        "chain = Chain('cli ray', [Step(id='qa', input_model=Question, output_model=Answer,\n"
        "              engine_name='fake', user_prompt='{{ text }}'), apply(shout)])\n"
    )
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"text": f"q{i}"}) + "\n" for i in range(6)))
    try:
        args = ["run", f"{chain_file}:chain", "-i", inputs, "-o", tmp_path / "run", "-q"]
        args += ["--executor", "ray", "--replicas", "2"]
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        sys.modules.pop("ray_cli_chain", None)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["executor"] == "ray" and meta["counts"]["records_out"] == 6
    rows = read_jsonl(tmp_path / "run" / "flattened")
    assert all(r["shout.answer"] == r["qa.answer"].upper() for r in rows)


@pytest.mark.timeout(RAY_TIMEOUT)
def test_a_driver_joins_an_existing_cluster_by_address(ray_cluster: Any, tmp_path: Path) -> None:
    """Another process runs a chain on this module's Ray instance, given its address."""
    address = ray_cluster.get_runtime_context().gcs_address
    script = (
        "import json, sys\n"
        "from pydantic import BaseModel\n"
        "from chainette import Chain, Step, register_engine\n"
        "register_engine('fake', backend='fake')\n"
        "class Q(BaseModel):\n    text: str\n"
        "class A(BaseModel):\n    answer: str\n"
        "chain = Chain('by address', [Step(id='qa', input_model=Q, output_model=A, engine_name='fake',\n"
        "              user_prompt='{{ text }}')])\n"
        f"r = chain.run([Q(text=str(i)) for i in range(5)], {str(tmp_path / 'run')!r}, executor='ray',\n"
        f"              ray_address={address!r}, replicas=1)\n"
        "import ray\n"
        "print(json.dumps([r.metadata['ray'], r.counts, ray.is_initialized()]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    ray_meta, counts, still_connected = json.loads(out.stdout.strip().splitlines()[-1])
    assert ray_meta["address"] == address and ray_meta["worker_processes"] == 1
    assert counts["records_out"] == 5
    assert still_connected is False  # the run disconnected from the cluster it joined...
    assert ray_cluster.cluster_resources()["CPU"] == 2  # ...which is still up


class Text(BaseModel):
    text: str


def slow_pass(request: Any) -> float:
    """The fake engine's latency: 1 s for a pass of the record "slow", none for the others."""
    return 1.0 if "slow" in request.messages[-1]["content"] else 0.0


def grow(request: Any) -> dict[str, str]:
    return {"text": request.messages[-1]["content"] + "+"}


def three_passes(text: Text) -> bool:
    return text.text.count("+") >= 3


@pytest.mark.timeout(RAY_TIMEOUT)
def test_on_ray_a_loops_passes_and_stop_reasons_do_not_depend_on_batch_size_under_a_deadline(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """In a worker each record of a chunk goes through the chain on its own: with the node-by-node
    lockstep, the fast records of "slow"'s chunk waited for its passes and hit the deadline too."""
    register_engine("echo", backend="fake", latency=slow_pass, max_batch_size=1, responder=grow)
    texts = ["slow", "a", "b", "c"]

    def outcome(batch_size: int) -> dict[str, tuple[int, str]]:
        step = Step(
            id="grow", input_model=Text, output_model=Text, engine_name="echo", user_prompt="{{ text }}"
        )
        loop = Loop("l", step, until=three_passes, deadline_s=1.5, max_iterations=10)
        result = Chain("c", [loop], batch_size=batch_size).run(
            [Text(text=t) for t in texts], tmp_path / str(batch_size), cache="off", executor="ray", replicas=1
        )
        rows = read_jsonl(tmp_path / str(batch_size) / "flattened")
        assert result.counts["records_out"] == 4 and result.metadata["executor"] == "ray"
        # the loop's own counters came back from the workers and added up (a LoopStats)
        assert result.metadata["nodes"]["l"]["stop_reasons"] == {"deadline": 1, "until": 3}
        return {r["input.text"]: (r["l.iterations"], r["l.stop_reason"]) for r in rows}

    one, many = outcome(1), outcome(16)
    assert one == many
    assert many == {"slow": (2, "deadline"), "a": (3, "until"), "b": (3, "until"), "c": (3, "until")}


def slow_answer(pid_file: str, seconds: float, request: Any) -> float:
    """The fake engine's latency: ``seconds`` for the record "slow" (its worker's process id noted
    in ``pid_file``), none for the others."""
    if "slow" not in request.messages[-1]["content"]:
        return 0.0
    Path(pid_file).write_text(str(os.getpid()))
    return seconds


@pytest.mark.timeout(RAY_TIMEOUT)
def test_on_ray_a_fast_record_is_written_before_a_slow_one_of_its_chunk_finishes(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """A worker hands each record back as soon as it is done: the driver writes the nine fast
    records of a chunk (and counts them) while the slow one is still waiting for its answer."""
    latency = functools.partial(slow_answer, str(tmp_path / "pid"), 2.0)
    register_engine("lat", backend="fake", latency=latency, max_batch_size=1)
    texts = ["slow one", *(f"fast {i}" for i in range(9))]
    done: list[int] = []

    def note(kind: str, data: dict[str, Any]) -> None:
        if kind == "node_progress" and data["node"] == "qa":
            done.append(data["done"])

    result = Chain("c", [qa_step("lat")], batch_size=64).run(
        [Question(text=t) for t in texts], tmp_path / "run", executor="ray", replicas=1, on_event=note
    )
    rows = read_jsonl(tmp_path / "run" / "flattened")
    assert len(by_id(rows)) == 10 and result.counts["failures"] == 0
    assert rows[-1]["input.text"] == "slow one" and rows[-1]["_index"] == 0  # one chunk: it came last
    # the driver counted the nine fast ones before the slow one came back (a whole chunk: [10])
    assert 9 in done and done[-1] == 10
    assert result.metadata["nodes"]["qa"]["records_out"] == 10


@pytest.mark.timeout(RAY_TIMEOUT)
def test_on_ray_the_next_chunk_goes_out_once_a_chunks_worth_of_records_came_back(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """An actor's room is counted in records (``workers × batch_size``), given back record by
    record: two chunks of 4 each holding one slow record (2 s) fill the actor's room of 8, and the
    third chunk goes out once 6 fast records came back, not once a whole chunk did, so its records
    are written before either slow one."""
    latency = functools.partial(slow_answer, str(tmp_path / "pid"), 2.0)
    register_engine("lat", backend="fake", latency=latency, max_batch_size=1)
    texts = [f"slow {i}" if i in (0, 4) else f"fast {i}" for i in range(12)]
    Chain("c", [qa_step("lat")], batch_size=4).run(
        [Question(text=t) for t in texts], tmp_path / "run", executor="ray", replicas=1, workers=2
    )
    order = [row["_index"] for row in read_jsonl(tmp_path / "run" / "flattened")]
    assert sorted(order) == list(range(12))
    assert max(order.index(i) for i in range(8, 12)) < min(order.index(0), order.index(4))


@pytest.mark.timeout(RAY_TIMEOUT)
def test_a_worker_lost_mid_chunk_is_sent_again_only_what_it_had_not_handed_back(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """The worker running a chunk of 8 is killed once it has handed back 7 records (the 8th waits
    3 s for its answer): only the 8th is sent again. The 7 are written once and not asked again,
    not even of the ledger (sending the whole chunk again took their answers from it)."""
    pid_file = tmp_path / "pid"
    latency = functools.partial(slow_answer, str(pid_file), 3.0)
    register_engine("lat", backend="fake", latency=latency, max_batch_size=1)
    texts = [*(f"fast {i}" for i in range(7)), "slow one"]
    killed: list[int] = []

    def kill_once_seven_are_back(kind: str, data: dict[str, Any]) -> None:
        if kind == "node_progress" and data["node"] == "qa" and data["done"] == 7 and not killed:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = Chain("c", [qa_step("lat")], batch_size=8).run(
        [Question(text=t) for t in texts],
        tmp_path / "run",
        ledger=tmp_path / "ledger.sqlite",
        executor="ray",
        replicas=2,
        workers=1,
        on_event=kill_once_seven_are_back,
    )
    assert killed
    meta = result.metadata
    assert meta["status"] == "completed" and meta["ray"]["chunks_retried"] == 1
    assert (
        len(by_id(read_jsonl(result.path / "flattened"))) == 8 == len(by_id(read_jsonl(result.path / "qa")))
    )
    assert read_jsonl(result.path / "failures.jsonl") == []
    assert meta["cache"]["hits"] == 0 and meta["cache"]["sent"] == 8  # the slow one's second try only
    assert meta["nodes"]["qa"]["records_out"] == 8


def test_a_function_that_cannot_be_pickled_is_refused_naming_its_node(tmp_path: Path) -> None:
    register_engine("fake", backend="fake")
    lock = threading.Lock()

    def guarded(answer: Answer) -> Answer:
        with lock:
            return answer

    chain = Chain("locked", [qa_step(), apply(guarded)])
    with pytest.raises(
        ChainDefinitionError, match=r"apply 'guarded' cannot be sent to the Ray workers.*lock"
    ):
        chain.run([Question(text="q")], tmp_path / "run", executor="ray")
    assert not (tmp_path / "run").exists()  # refused before the run folder


def test_a_whole_stream_node_is_refused_on_ray(tmp_path: Path) -> None:
    register_engine("fake", backend="fake")
    chain = Chain("take", [qa_step(), Take(2)])
    with pytest.raises(ChainDefinitionError, match=r"whole input stream.*executor='local'"):
        chain.run([Question(text="q")], tmp_path / "run", executor="ray")


def test_without_ray_installed_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_engine("fake", backend="fake")
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` fails as when it is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'chainette\[ray\]'"):
        Chain("qa", [qa_step()]).run([Question(text="q")], tmp_path / "run", executor="ray")
    assert not (tmp_path / "run").exists()


def test_bad_executor_options_are_refused(tmp_path: Path) -> None:
    register_engine("fake", backend="fake")
    chain = Chain("qa", [qa_step()])
    with pytest.raises(ValueError, match="executor must be one of 'local', 'ray'"):
        chain.run([], tmp_path / "a", executor="dask")
    with pytest.raises(ValueError, match="replicas must be an integer >= 1"):
        chain.run([], tmp_path / "b", executor="ray", replicas=0)
    with pytest.raises(ValueError, match="ray_address is for executor='ray'"):
        chain.run([], tmp_path / "c", ray_address="auto")


def test_a_local_run_imports_nothing_of_ray(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pydantic import BaseModel\n"
        "from chainette import Chain, Step, apply, register_engine\n"
        "import chainette.cli\n"
        "register_engine('fake', backend='fake')\n"
        "class Q(BaseModel):\n    text: str\n"
        "class A(BaseModel):\n    answer: str\n"
        "chain = Chain('local', [Step(id='qa', input_model=Q, output_model=A, engine_name='fake',\n"
        "              user_prompt='{{ text }}')])\n"
        f"chain.run([Q(text='q')], {str(tmp_path / 'run')!r}, ledger={str(tmp_path / 'l.sqlite')!r})\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'chainette.runtime.ray')))\n"
        "print(loaded)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["executor"] == "local"
