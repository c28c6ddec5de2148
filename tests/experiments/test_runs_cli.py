"""``chainette runs list | show | summarize | compare | rerun`` on runs recorded with the fake engine."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from tests.experiments import shared
from typer.testing import CliRunner

from chainette.cli import app

MODULE = """
from tests.experiments.shared import CASES, CalcConfig, build_chain, counting_calculator, sloppy_calculator

from chainette import Experiment, numeric, register_engine

register_engine("calc", backend="fake", responder=counting_calculator)
register_engine("sloppy", backend="fake", responder=sloppy_calculator)

calc = Experiment("calc", build_chain, CASES, [numeric("answer")], CalcConfig)
"""


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """runs/a (engine=calc) then runs/b (engine=sloppy), both through ``chainette experiment run``."""
    module = tmp_path / "calc_experiment.py"
    module.write_text(textwrap.dedent(MODULE))
    root = tmp_path / "runs"
    for name, engine in (("a", "calc"), ("b", "sloppy")):
        args = ["experiment", "run", f"{module}:calc", "-c", f"engine={engine}", "-o", str(root / name)]
        done = CliRunner().invoke(app, [*args, "--ledger", str(tmp_path / "ledger.sqlite")])
        assert done.exit_code == 0, done.output
    shared.CALLS.clear()
    return root


def runs(*args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(app, ["runs", *args])
    return done.exit_code, done.stdout, done.stderr


def test_runs_list_shows_both_runs_newest_first_and_says_when_there_are_none(
    recorded: Path, tmp_path: Path
) -> None:
    code, out, _ = runs("list", "--root", str(recorded))
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("│") and line.split("│")[1].strip()]
    assert [row.split("│")[1].strip() for row in rows] == ["b", "a"]
    assert (
        "25.0%" in rows[0]
        and "4" in rows[0]
        and "50.0%" in rows[1]
        and "calc /" in rows[0]  # its suite ("python") wraps onto the next line at 80 columns
    )
    code, out, _ = runs("list", "--root", str(tmp_path / "empty"))
    assert code == 0 and "No runs under" in out


def test_runs_show_prints_the_config_the_cases_and_the_totals(recorded: Path) -> None:
    code, out, _ = runs("show", "a", "--root", str(recorded))
    assert code == 0, out
    assert "engine=calc" in out and "sampling.temperature=0.7" in out
    assert "git" in out and "suite (built in Python), 4 cases" in out
    assert any("off" in line and "fail" in line and "got 3, expected 2" in line for line in out.splitlines())
    assert any("boom" in line and "error" in line for line in out.splitlines())
    assert "pass rate 50.0%: 2 passed, 1 failed, 1 errors, 0 unscored of 4" in out


def test_runs_summarize_lists_the_failing_cases_and_the_cache(recorded: Path) -> None:
    code, out, _ = runs("summarize", str(recorded / "a"))
    assert code == 0, out
    assert "cache: 4 sent, 0 from the ledger" in out and "tokens:" in out
    failing = [line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("  ")]
    assert failing == ["off", "boom"]


def test_runs_compare_lists_the_changed_case_with_both_outputs_and_the_deltas(recorded: Path) -> None:
    code, out, _ = runs("compare", "a", "b", "--root", str(recorded))
    assert code == 0, out
    assert "pass rate 50.0% → 25.0% (-25.0 pts)" in out
    changed = [line for line in out.splitlines() if line.startswith("│")]
    assert len(changed) == 1 and "mul" in changed[0] and "pass → fail" in changed[0]
    assert '{"answer": 6.0}' in changed[0] and '{"answer": 7.0}' in changed[0]
    assert "engine: calc → sloppy" in out and "cost $0.0000 → $0.0000" in out


def test_runs_compare_json_holds_the_same_deltas_cases_and_config_as_the_table(recorded: Path) -> None:
    code, out, _ = runs("compare", "a", "b", "--root", str(recorded), "--json")
    assert code == 0, out
    diff = json.loads(out)
    assert (diff["a"]["id"], diff["b"]["id"]) == ("a", "b")
    assert (diff["a"]["pass_rate"], diff["b"]["pass_rate"]) == (0.5, 0.25)
    assert diff["pass_rate_delta"] == pytest.approx(-0.25)
    assert [(c["id"], c["status_a"], c["status_b"]) for c in diff["changed"]] == [("mul", "pass", "fail")]
    assert diff["changed"][0]["output_a"] == {"answer": 6.0} and diff["changed"][0]["output_b"] == {
        "answer": 7.0
    }
    assert diff["config_diff"]["engine"] == {"a": "calc", "b": "sloppy"}
    assert diff["only_a"] == [] and diff["only_b"] == []


def test_runs_rerun_replays_the_run_from_the_ledger_without_engine_calls(recorded: Path) -> None:
    out_dir = recorded / "a-again"
    code, out, err = runs("rerun", "a", "--root", str(recorded), "-o", str(out_dir))
    assert code == 0, err
    assert out.splitlines()[-1] == str(out_dir)
    # boom's engine error is never stored, so it is the one request sent again
    assert shared.CALLS == ["Compute boom 1 + 1"]
    again = json.loads((out_dir / "experiment.json").read_text())
    before = json.loads((recorded / "a" / "experiment.json").read_text())
    assert [(c["id"], c["status"], c["output"]) for c in again["cases"]] == [
        (c["id"], c["status"], c["output"]) for c in before["cases"]
    ]
    assert again["config"] == before["config"] and again["rerun"] == before["rerun"]
    assert again["totals"]["cache"]["hits"] == 3


def test_runs_rerun_failed_only_runs_just_the_failed_cases(recorded: Path) -> None:
    out_dir = recorded / "b-failed"
    code, _, err = runs("rerun", "b", "--root", str(recorded), "--failed-only", "-o", str(out_dir))
    assert code == 0, err
    data = json.loads((out_dir / "experiment.json").read_text())
    assert [(c["id"], c["status"]) for c in data["cases"]] == [
        ("mul", "fail"),
        ("off", "fail"),
        ("boom", "error"),
    ]
    assert shared.CALLS == ["Compute boom 1 + 1"]  # mul and off from the ledger
    assert data["config"]["engine"] == "sloppy"


def test_runs_rerun_refuses_a_run_made_from_python_saying_how(tmp_path: Path) -> None:
    from chainette import Experiment, numeric, register_engine

    register_engine("calc", backend="fake", responder=shared.counting_calculator)
    experiment = Experiment("calc", shared.build_chain, shared.CASES, [numeric("answer")], shared.CalcConfig)
    experiment.run(tmp_path / "py", overrides=["engine=calc"], ledger=tmp_path / "l.sqlite")
    code, _, err = runs("rerun", str(tmp_path / "py"))
    assert code == 1
    assert "run from Python" in err and "experiment.run(overrides=['engine=calc'])" in err


def test_runs_show_an_unknown_run_exits_1_naming_it(recorded: Path) -> None:
    code, _, err = runs("show", "zzz", "--root", str(recorded))
    assert code == 1 and "No experiment run 'zzz'" in err


def test_runs_show_case_prints_its_figures_and_its_timeline(recorded: Path) -> None:
    code, out, _ = runs("show", "a", "--root", str(recorded), "--case", "off")
    assert code == 0, out
    assert "case off of run a: fail, score 0" in out
    assert "numeric(answer): passed=False, score 0, metric 1" in out
    assert "tokens and cost by step" in out and "solve" in out
    spans = [line for line in out.splitlines() if line.startswith("│ solve │ run ")]
    assert len(spans) == 1 and "█" in spans[0] and "…" not in spans[0]
    assert "Records run in chunks" in out
    code, _, err = runs("show", "a", "--root", str(recorded), "--case", "of")
    assert code == 1 and "has no case 'of'. Did you mean 'off'?" in err


def test_runs_list_and_show_print_json_when_asked(recorded: Path) -> None:
    code, out, _ = runs("list", "--root", str(recorded), "--json")
    assert code == 0, out
    listed = json.loads(out)
    assert [r["id"] for r in listed] == ["b", "a"] and listed[1]["pass_rate"] == 0.5
    assert listed[1]["cases"] == 4 and listed[1]["duration_s"] is not None
    code, out, _ = runs("show", "a", "--root", str(recorded), "--json")
    shown = json.loads(out)
    assert shown["id"] == "a" and [c["id"] for c in shown["cases"]] == ["add", "mul", "off", "boom"]
    assert shown["cases"][0]["timeline"][0]["node"] == "solve"
    code, out, _ = runs("show", "a", "--root", str(recorded), "--json", "--case", "add")
    assert json.loads(out)["tokens"]["prompt"] > 0
