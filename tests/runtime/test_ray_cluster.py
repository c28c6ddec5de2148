"""``executor="ray"`` on a cluster of several nodes on this machine (``ray.cluster_utils.Cluster``):
a head that runs no actor and two worker nodes. A worker node removed mid-run, and one ledger
shared by two driver processes.

One cluster serves the module; the test that removes a node runs last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from tests.helpers import Question, ledger_keys, qa_step, read_jsonl

from chainette import Chain, register_engine
from chainette.engines.stub_server import Faults, StubServer
from chainette.runtime.executor import run_chain

RAY_TIMEOUT = 300  # three nodes and their worker processes on a busy 2-core machine
LATENCY = 1.0  # every stub answer takes this long: chunks are in flight when the node goes


class Nodes:
    """The module's cluster: ``cluster`` (``ray.cluster_utils.Cluster``), its two worker nodes."""

    def __init__(self, cluster: Any, workers: list[Any]) -> None:
        self.cluster = cluster
        self.workers = workers

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def node_of(self, pid: int) -> Any:
        """The worker node whose raylet started process ``pid`` (None: not a worker node's)."""
        import ray

        ancestors = {p.pid for p in psutil.Process(pid).parents()}
        for node in self.workers:
            raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process
            if raylet.pid in ancestors:
                return node
        return None


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    import ray
    from ray.cluster_utils import Cluster

    # the head runs no actor (0 CPUs): every ChainWorker lands on a worker node
    small = {"object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **small}
    )
    workers = [cluster.add_node(num_cpus=1, **small) for _ in range(2)]
    cluster.wait_for_nodes()
    # the workers import what this process imports (tests.helpers' models), by the same names
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
    ray.init(address=cluster.address, runtime_env=env, logging_level="WARNING")
    try:
        yield Nodes(cluster, workers)
    finally:
        ray.shutdown()
        cluster.shutdown()


def worker_pids(nodes: Nodes) -> list[int]:
    """The ChainWorker processes alive on the module's worker nodes (children of their raylets:
    never another Ray instance's on this machine)."""
    import ray

    out = []
    for node in nodes.workers:
        if node not in nodes.cluster.worker_nodes:  # removed
            continue
        raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process
        try:
            children = psutil.Process(raylet.pid).children(recursive=True)
        except psutil.Error:  # the node was removed
            continue
        for proc in children:
            try:
                if "ChainWorker" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc.pid)
            except psutil.Error:
                continue
    return out


def prompts_sent(server: StubServer) -> Counter[str]:
    """How many times the stub received each distinct user prompt."""
    return Counter(body["messages"][-1]["content"] for _, _, body in server.received)


def counting_stub() -> StubServer:
    """The stub, every answer ``LATENCY`` late, keeping every request body (not only the last 100)."""
    from collections import deque

    server = StubServer(faults=Faults(rate_slow=1.0, slow_seconds=LATENCY))
    server.received = deque()
    return server


DRIVER = """
import json, sys
from pydantic import BaseModel
from chainette import Chain, Step, register_engine

class Topic(BaseModel):
    topic: str

class Fact(BaseModel):
    fact: str

run_dir, ledger, base_url, first, last, executor, address = sys.argv[1:8]
register_engine("stub", backend="openai", model="m", base_url=base_url)
step = Step(id="fact", input_model=Topic, output_model=Fact, engine_name="stub",
            user_prompt="One fact about {{ topic }}.")
chain = Chain("shared ledger", [step], batch_size=2)
# the local driver one chunk at a time: slower than the Ray one, so the two overlap
options = {"executor": "ray", "ray_address": address, "replicas": 2} if executor == "ray" else {"workers": 1}
result = chain.run([Topic(topic=f"topic {i}") for i in range(int(first), int(last))], run_dir,
                   ledger=ledger, **options)
print(json.dumps(result.metadata["cache"]))
"""


def start_driver(
    tmp_path: Path, name: str, server: StubServer, inputs: range, executor: str, address: str
) -> Any:
    """A driver process running DRIVER over topics ``inputs`` into ``tmp_path / name`` (ledger:
    ``tmp_path / "shared.sqlite"``); its stdout's last line is the run's cache summary."""
    script = tmp_path / "shared_driver.py"
    script.write_text(DRIVER)
    args = [str(tmp_path / name), str(tmp_path / "shared.sqlite"), server.base_url]
    args += [str(inputs.start), str(inputs.stop), executor, address]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: Any) -> dict[str, Any]:
    out, err = proc.communicate(timeout=RAY_TIMEOUT - 60)
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


def facts(run_dir: Path) -> dict[int, str]:
    """The run's answers by input index; each input once, no failure."""
    assert len({r["_id"] for r in read_jsonl(run_dir / "fact")}) == len(read_jsonl(run_dir / "fact"))
    rows = read_jsonl(run_dir / "flattened")
    assert len({r["_index"] for r in rows}) == len(rows), "a row was written twice"
    assert read_jsonl(run_dir / "failures.jsonl") == []
    return {r["_index"]: r["fact.fact"] for r in rows}


@pytest.mark.timeout(RAY_TIMEOUT)
def test_two_drivers_one_after_the_other_share_a_ledger_and_send_nothing_twice(
    nodes: Nodes, tmp_path: Path
) -> None:
    with counting_stub() as server:
        first = finished(start_driver(tmp_path, "first", server, range(0, 12), "ray", nodes.address))
        second = finished(start_driver(tmp_path, "second", server, range(6, 18), "ray", nodes.address))
        sent = prompts_sent(server)
    assert first["sent"] == 12 and first["hits"] == 0
    assert second["hits"] == 6 and second["sent"] == 6  # only topics 12..17 were new
    assert sent == Counter({f"One fact about topic {i}.": 1 for i in range(18)})
    a, b = facts(tmp_path / "first"), facts(tmp_path / "second")
    assert sorted(a) == list(range(12))
    assert sorted(b) == list(range(12))  # indexes count from this run's first input: topic 6
    assert all(b[i - 6] == a[i] for i in range(6, 12))  # the ledger's answers
    assert len(ledger_keys(tmp_path / "shared.sqlite")) == 18


@pytest.mark.timeout(RAY_TIMEOUT)
def test_two_drivers_at_once_on_one_ledger_lose_and_corrupt_nothing(nodes: Nodes, tmp_path: Path) -> None:
    """A Ray driver and a local one, the same inputs, at the same time: each run is whole and
    right, the ledger keeps one answer per request, and the claims in the ledger (a lease per
    request) make the two drivers send each prompt once between them."""
    n = 24
    with counting_stub() as server:
        procs = [
            start_driver(tmp_path, "ray", server, range(n), "ray", nodes.address),
            start_driver(tmp_path, "local", server, range(n), "local", nodes.address),
        ]
        ray_cache, local_cache = (finished(p) for p in procs)
        sent = prompts_sent(server)
    a, b = facts(tmp_path / "ray"), facts(tmp_path / "local")
    assert sorted(a) == sorted(b) == list(range(n)) and a == b  # same answers: the stub is deterministic
    assert len(ledger_keys(tmp_path / "shared.sqlite")) == n
    assert set(sent) == {f"One fact about topic {i}." for i in range(n)}
    assert max(sent.values()) == 1  # claims through the ledger: once across both drivers
    total = sum(sent.values())
    assert total == ray_cache["sent"] + local_cache["sent"]
    assert ray_cache["sent"] + ray_cache["hits"] == local_cache["sent"] + local_cache["hits"] == n
    print(
        f"two drivers at once: {total} requests for {n} distinct ones "
        f"(ray {ray_cache['sent']}, local {local_cache['sent']})"
    )


@pytest.mark.timeout(RAY_TIMEOUT)
def test_a_worker_node_removed_mid_run_loses_nothing_and_resends_only_what_was_in_flight(
    nodes: Nodes, tmp_path: Path
) -> None:
    n = 24
    chain = Chain("cluster qa", [qa_step("stub", prompt="question {{ text }}")], batch_size=2)
    ledger = tmp_path / "ledger.sqlite"
    seen: dict[str, Any] = {}
    with counting_stub() as server:
        register_engine("stub", backend="openai", model="m", base_url=server.base_url)

        def remove_a_node_once_busy() -> None:
            # both actors up, on both worker nodes, answers stored, and more requests in flight
            # than one actor can have (2 chunks of 2): each actor has some
            while len(pids := worker_pids(nodes)) < 2:
                threading.Event().wait(0.05)
            while len(ledger_keys(ledger)) < 2 or server.stats["requests"] - server.stats["ok"] < 5:
                threading.Event().wait(0.01)
            homes = {id(nodes.node_of(pid)) for pid in pids}
            seen["spread"] = len(homes) == 2 and None not in homes
            victim = nodes.node_of(pids[0])
            # a node lost at once (its processes with it): its actor first, then the node. What
            # it may have to ask again is at most what was sent and not yet stored at that moment
            seen["answered"] = ledger_keys(ledger)
            os.kill(pids[0], signal.SIGKILL)
            seen["sent"] = server.stats["requests"]
            nodes.cluster.remove_node(victim, allow_graceful=False)
            seen["killed"] = pids[0]

        async def main() -> Any:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, remove_a_node_once_busy)
                result = await run_chain(
                    chain,
                    [Question(text=str(i)) for i in range(n)],
                    tmp_path / "run",
                    ledger=ledger,
                    executor="ray",
                    replicas=2,
                    workers=2,
                )
            return result

        result = anyio.run(main)
        sent = prompts_sent(server)

    meta = result.metadata
    assert seen["spread"], "the actors were not one on each worker node"
    assert meta["ray"]["chunks_retried"] >= 1  # the lost node's chunks went to the other one
    assert seen["killed"] not in worker_pids(nodes)
    assert meta["status"] == "completed"
    rows = read_jsonl(result.path / "flattened")
    assert sorted(r["_index"] for r in rows) == list(range(n))  # every record once
    assert len({r["_id"] for r in read_jsonl(result.path / "qa")}) == len(read_jsonl(result.path / "qa")) == n
    assert read_jsonl(result.path / "failures.jsonl") == []
    assert meta["counts"]["failures"] == 0 and meta["counts"]["records_out"] == n
    assert len(ledger_keys(ledger)) == n
    # every prompt sent; those sent twice were in flight (sent, not stored) when the node went
    assert set(sent) == {f"question {i}" for i in range(n)}
    resent = sum(count - 1 for count in sent.values())
    in_flight = seen["sent"] - len(seen["answered"])
    print(f"in flight at the kill: {in_flight}, sent again: {resent}, ray: {meta['ray']}")
    assert resent <= in_flight
