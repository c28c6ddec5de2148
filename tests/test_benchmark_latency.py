"""benchmarks/latency.py at a tiny size: it runs the loop and Chainette, checks their rows and prints
its table and figures; and its goals are judged from the right references. A smoke test: nothing
here asserts a speed."""

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
    # the 3-step ideal: 128 slots / (0.1 x 2 s) = 640 req/s, bounded by the zero-latency 300
    assert judged["tail3: chainette / ideal"]["ratio"] == pytest.approx(0.5)
    # fewer requests than slots: all in flight at once, so 20 requests / 1 s is the ideal
    (few,) = [g for g in bench.goals({"fixed": {"chainette": 19.0}}, {"fixed": 20}, 128)]
    assert few["verdict"] == "MET" and few["ratio"] == pytest.approx(0.95)
