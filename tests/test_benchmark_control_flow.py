"""benchmarks/control_flow.py at tiny sizes: it runs, checks its sides' outputs and prints its figures
as a JSON line. A smoke test: nothing here asserts a speed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "control_flow.py"
PEER = ROOT / "benchmarks" / ".peers-venv" / "bin" / "python"


def run_script(*args: str) -> tuple[str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_control_flow", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_routing_section_runs_and_reports_every_figure_as_json(tmp_path: Path) -> None:
    out, summary = run_script("--records", "300", "--no-penguiflow", "--workdir", str(tmp_path))
    routing = summary["sections"]["routing"]
    assert summary["benchmark"] == "control_flow" and list(summary["sections"]) == ["routing", "map_collect"]
    assert routing["records"] == 300 and routing["correct"] is True
    assert set(routing["records_per_s"]) == set(routing["peak_rss_mib"]) == {"loop", "chainette"}
    assert all(v > 0 for v in [*routing["records_per_s"].values(), *routing["peak_rss_mib"].values()])
    assert routing["chainette_vs_loop"] > 0 and routing["chainette_vs_penguiflow"] is None
    assert "CORRECT: chainette: 300 flattened rows (expected 300); 300 compared" in out
    # memory flat in the number of records: Chainette also runs on a tenth of them, RSS compared
    assert routing["peak_rss_mib_tenth"] > 0 and routing["peak_rss_ratio_vs_tenth"] > 0
    assert out.count("MEMORY GOAL") == 2 and "at 300 records / at 30 =" in out


def test_the_map_collect_section_compares_rows_and_memory(tmp_path: Path) -> None:
    out, summary = run_script("--records", "200", "--sections", "map_collect", "--workdir", str(tmp_path))
    section = summary["sections"]["map_collect"]
    assert section["correct"] is True and section["chainette_vs_penguiflow"] is None
    assert section["peak_rss_mib_tenth"] > 0 and section["peak_rss_ratio_vs_tenth"] > 0
    assert "CORRECT: chainette: 200 rows (expected 200), 200 compared with the loop's, 0 differ" in out
    assert "MEMORY GOAL" in out and "at 20 =" in out


def test_the_check_fails_when_chainette_rows_differ_from_the_loop(tmp_path: Path) -> None:
    bench = load_script()
    src = tmp_path / "in.jsonl"
    bench.routing_input(src, 120)
    sides = {
        "loop": bench.routing_loop(src, tmp_path / "loop.jsonl"),
        "chainette": bench.routing_chainette(src, tmp_path / "chainette", 16),
    }
    assert sorted(sides["loop"]["routes"]) == ["high", "low", "mid"]  # every route is taken
    assert all(line.startswith("CORRECT") for line in bench.routing_verify(tmp_path, 120, sides, 1))

    flat = next((tmp_path / "chainette" / "flattened").glob("*.jsonl"))
    rows = [json.loads(line) for line in flat.read_text().splitlines()]
    route = bench.pick(bench.Rec(id=0, score=rows[7]["input.score"], text=""))
    rows[7] = {k.replace(f"{route}.", "wrong."): v for k, v in rows[7].items()}  # as if routed elsewhere
    flat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (verdict,) = bench.routing_verify(tmp_path, 120, sides, 1)
    assert verdict.startswith("INCORRECT") and "1 differ" in verdict
