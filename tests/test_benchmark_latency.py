"""benchmarks/latency.py at a tiny size: it runs the loop and Chainette, checks their rows and prints
its table and figures; and its goals are judged from the right references, the schedule bound
(benchmarks/latency_bound.py) among them, checked on schedules small enough to work out by hand.
A smoke test: nothing here asserts a speed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "latency.py"


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_latency", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_the_benchmark_runs_both_chains_and_checks_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(SCRIPT), "--records", "20", "--no-curator", "--repeat", "1"]
    cmd += ["--shapes", "none,none3", "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["benchmark"] == "latency" and summary["correct"] is True
    assert summary["records"] == 20 and summary["chain_records"] == 5
    assert set(summary["median_req_per_s"]) == {"none", "none3"}
    assert all(set(sides) == {"loop", "chainette"} for sides in summary["median_req_per_s"].values())
    assert "none3  chainette      20 requests" in out  # 5 records x 4 requests, all sent
    assert "20 valid rows  CORRECT" in out and "5 valid rows  CORRECT" in out
    assert "outputs: CORRECT" in out and "req/s (median)" in out
    judged = [g for g in summary["goals"] if g["target"] is not None]
    assert judged == []  # no latency shape ran: nothing to judge, nothing invented
    # the machine's ceiling: every shape's chainette / hand-loop ratio, reported and not judged
    assert {g["goal"] for g in summary["goals"]} == {"none: chainette / loop", "none3: chainette / loop"}


def test_goals_are_judged_against_the_ideal_the_same_run_and_the_peer() -> None:
    bench = load_script()
    rates = {
        "none": {"chainette": 300.0},
        "fixed": {"chainette": 116.0, "loop": 125.0},
        "tail": {"chainette": 250.0, "curator": 150.0},
        "none3": {"chainette": 300.0},
        "tail3": {"chainette": 150.0},
    }
    sent = dict.fromkeys(rates, 2000)
    judged = {g["goal"]: g for g in bench.goals(rates, sent, 128)}
    assert judged["fixed: chainette / ideal"]["verdict"] == "MET"  # 116 / 128 = 0.906 >= 0.9
    assert judged["fixed: loop / ideal"]["verdict"] == ""  # the loop is reported, not judged
    assert judged["tail: chainette / its none"]["ratio"] == pytest.approx(250 / 300, abs=1e-3)
    assert judged["tail: chainette / its none"]["verdict"] == "MISSED"  # 0.833 < 0.85
    assert judged["tail: chainette / curator"]["verdict"] == "MISSED"  # 1.67 < 1.8
    # the ratio's ceiling on these draws: a client spending no CPU at all (the schedule bound)
    free = bench.best_rate(bench.drawn_latencies(2000, 0.1, 2.0), records=2000, steps=1, concurrency=128)[0]
    assert judged["tail: zero-CPU bound / curator"]["ratio"] == pytest.approx(free / 150, abs=1e-3)
    assert "tail: loop / curator" not in judged  # no hand loop on the tail in this run
    with_loop = {**rates, "tail": {**rates["tail"], "loop": 270.0}}
    judged = {g["goal"]: g for g in bench.goals(with_loop, sent, 128)}
    assert judged["tail: loop / curator"]["ratio"] == pytest.approx(1.8)
    # the 3-step ideal: 128 slots / (0.1 x 2 s) = 640 req/s, bounded by the zero-latency 300
    assert judged["tail3: chainette / ideal"]["ratio"] == pytest.approx(0.5)
    # fewer requests than slots: all in flight at once, so 20 requests / 1 s is the ideal
    few = {g["goal"]: g for g in bench.goals({"fixed": {"chainette": 19.0}}, {"fixed": 20}, 128)}
    assert few["fixed: chainette / ideal"]["verdict"] == "MET"
    assert few["fixed: chainette / ideal"]["ratio"] == pytest.approx(0.95)
    assert few["fixed: chainette / bound"]["ratio"] == pytest.approx(0.95)  # the schedule says the same


def test_the_bound_draws_the_latencies_the_stub_server_draws() -> None:
    from latency_bound import drawn_latencies

    from chainette.engines.stub_server import Faults, StubServer

    server = StubServer(faults=Faults(rate_slow=0.1, slow_seconds=2.0))
    served = [2.0 if server._draw() == "slow" else 0.0 for _ in range(2001)]
    assert drawn_latencies(2000, 0.1, 2.0) == served[:2000]
    assert drawn_latencies(2000, 0.1, 2.0, skip=1) == served[1:]  # after Curator's probe request
    assert served.count(2.0) > 150


def test_one_step_bound_is_the_greedy_schedule_over_the_slots() -> None:
    from latency_bound import best_rate, makespan

    # 2 slots: the first request holds one 0-3 s; the other serves 1 s requests at 0, 1, 2;
    # the fifth starts at 3 on either slot and ends at 4 (not the 3.5 s of 7 s of work / 2 slots)
    assert makespan([3, 1, 1, 1, 1], records=5, steps=1, concurrency=2) == 4.0
    assert best_rate([3, 1, 1, 1, 1], records=5, steps=1, concurrency=2) == (5 / 4.0, "fifo")
    # fewer requests than slots: all at once, the slowest ends it
    assert makespan([1, 2, 0.5], records=3, steps=1, concurrency=128) == 2.0


def test_the_cpu_cost_is_spent_one_request_after_another_and_holds_the_slot() -> None:
    from latency_bound import makespan

    # zero latency: 4 requests x 0.25 s of CPU, one after another, whatever the slots
    assert makespan([0, 0, 0, 0], records=4, steps=1, concurrency=128, cost=0.25) == 1.0
    # 2 slots: the first spends CPU 0-0.5 and answers at 1.5; the second starts when the CPU is
    # free at 0.5 and answers at 2.0
    assert makespan([1, 1], records=2, steps=1, concurrency=2, cost=0.5) == 2.0
    # 1 slot, held for CPU and latency: 0-1.5, then 1.5-3.0
    assert makespan([1, 1], records=2, steps=1, concurrency=1, cost=0.5) == 3.0


def test_three_steps_follow_each_record_s_dependencies() -> None:
    from latency_bound import makespan

    # one record: draft 1 s, then pro 2 s and con 3 s side by side, then final 4 s = 1 + 3 + 4
    assert makespan([1, 2, 3, 4], records=1, steps=3, concurrency=8) == 8.0
    # one slot: one after another, 1 + 2 + 3 + 4
    assert makespan([1, 2, 3, 4], records=1, steps=3, concurrency=1) == 10.0


def test_the_three_step_bound_is_the_best_of_the_request_orders() -> None:
    from latency_bound import FIFO, IN_FLIGHT_FIRST, best_rate, makespan

    unit = [1.0] * 12  # 3 records, 2 slots, every request 1 s
    # first come first served: drafts 0, 1 at 0; draft 2 and pro 0 at 1; con 0, pro 1 at 2;
    # con 1, pro 2 at 3; con 2, final 0 at 4; finals 1, 2 at 5: done at 6
    assert makespan(unit, records=3, steps=3, concurrency=2, policy=FIFO) == 6.0
    # records in flight first: drafts 0, 1; pro 0, con 0; pro 1, con 1; finals 0, 1; only then
    # draft 2 (one slot idle), pro 2 and con 2, final 2: done at 7
    assert makespan(unit, records=3, steps=3, concurrency=2, policy=IN_FLIGHT_FIRST) == 7.0
    assert best_rate(unit, records=3, steps=3, concurrency=2) == (12 / 6.0, FIFO)


def test_the_tail_bound_of_the_benchmark_s_own_draws() -> None:
    from latency_bound import best_rate, drawn_latencies

    drawn = drawn_latencies(2000, 0.1, 2.0)
    slow = drawn.count(2.0)
    assert 128 < slow <= 256  # two rounds of slow answers over 128 slots
    # with no CPU cost: 2 rounds x 2 s = 4 s for 2,000 requests (the lead's 500 req/s ceiling)
    assert best_rate(drawn, records=2000, steps=1, concurrency=128) == (500.0, "fifo")
    # any CPU cost only lowers it
    assert best_rate(drawn, records=2000, steps=1, concurrency=128, cost=0.001)[0] < 500.0


def test_chainette_is_judged_against_its_own_bound_and_the_others_reported() -> None:
    bench = load_script()
    rates = {
        "none": {"chainette": 1000.0, "loop": 2000.0},
        "tail": {"chainette": 300.0, "loop": 400.0, "curator": 250.0},
        "none3": {"chainette": 1000.0},
        "tail3": {"chainette": 200.0, "loop": 300.0},
    }
    judged = {g["goal"]: g for g in bench.bound_goals(rates, dict.fromkeys(rates, 2000), 128)}
    assert set(judged) == {f"{s}: {side} / bound" for s in ("tail", "tail3") for side in rates[s]}
    tail = judged["tail: chainette / bound"]
    assert tail["target"] == 0.85 and tail["ratio"] == pytest.approx(300 / tail["bound"], abs=1e-3)
    assert tail["bound"] < 500.0 and "1.00 ms/request" in tail["how"]
    assert judged["tail: loop / bound"]["bound"] > tail["bound"]  # a cheaper client, a higher bound
    assert judged["tail: loop / bound"]["verdict"] == ""  # reported, not judged
    # no zero-latency run for these sides: the bound of the latencies alone
    assert (
        judged["tail: curator / bound"]["bound"] <= 500.0 and "0 ms" in judged["tail: curator / bound"]["how"]
    )
    assert judged["tail3: loop / bound"]["bound"] > judged["tail3: chainette / bound"]["bound"]
    assert judged["tail3: chainette / bound"]["target"] == 0.8
    assert judged["tail3: chainette / bound"]["verdict"] in ("MET", "MISSED")
