"""``chainette experiment run`` end to end on the fake engine, with ``-c`` overrides."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from chainette.cli import app

MODULE = """
from pathlib import Path

from tests.experiments.shared import CalcConfig, build_chain, calculator

from chainette import Experiment, numeric, register_engine

register_engine("calc", backend="fake", responder=calculator)

calc = Experiment("calc", build_chain, Path(__file__).parent / "cases.jsonl", [numeric("answer")], CalcConfig)
"""


def write_experiment(folder: Path) -> Path:
    (folder / "cases.jsonl").write_text(
        '{"id": "add", "input": {"question": "2 + 3"}, "expected": {"answer": 5}}\n'
        '{"id": "off", "input": {"question": "wrong 2 * 3"}, "expected": {"answer": 6}}\n'
        '{"id": "boom", "input": {"question": "boom 1 + 1"}, "expected": {"answer": 2}}\n'
    )
    path = folder / "calc_experiment.py"
    path.write_text(textwrap.dedent(MODULE))
    return path


def test_experiment_run_prints_the_cases_the_pass_rate_and_the_run_folder_last(tmp_path: Path) -> None:
    module = write_experiment(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "experiment",
            "run",
            f"{module}:calc",
            "-c",
            "engine=calc",
            "-c",
            "sampling.max_tokens=16",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == str(out)
    table = "\n".join(lines)
    assert "add" in table and "pass" in table and "got 7, expected 6" in table and "error" in table
    assert "pass rate 33.3%: 1 passed, 1 failed, 1 errors, 0 unscored of 3" in table
    data = json.loads((out / "experiment.json").read_text())
    assert data["config"]["sampling"]["max_tokens"] == 16 and data["config"]["engine"] == "calc"


def test_experiment_run_refuses_a_bad_override_with_a_did_you_mean(tmp_path: Path) -> None:
    module = write_experiment(tmp_path)
    result = CliRunner().invoke(
        app, ["experiment", "run", f"{module}:calc", "-c", "engine=calc", "-c", "sampling.max_tokns=3"]
    )
    assert result.exit_code == 1
    assert "Did you mean 'sampling.max_tokens'?" in result.stderr


def test_experiment_run_refuses_a_missing_required_field_and_a_wrong_name(tmp_path: Path) -> None:
    module = write_experiment(tmp_path)
    missing = CliRunner().invoke(app, ["experiment", "run", f"{module}:calc", "-o", str(tmp_path / "r")])
    assert missing.exit_code == 1 and "-c engine=VALUE" in missing.stderr
    assert not (tmp_path / "r").exists()
    wrong = CliRunner().invoke(app, ["experiment", "run", f"{module}:calcc", "-c", "engine=calc"])
    assert wrong.exit_code == 1 and "Did you mean" in wrong.stderr and ":calc?" in wrong.stderr


def test_experiment_config_lists_the_keys_but_not_internal_ones(tmp_path: Path) -> None:
    module = write_experiment(tmp_path)
    module.write_text(
        module.read_text()
        .replace(
            "CalcConfig)",
            "Hidden)",
        )
        .replace(
            "register_engine(",
            "from typing import Annotated\nfrom chainette import Internal\n\n"
            "class Hidden(CalcConfig):\n    prompt_text: Annotated[str, Internal()] = ''\n\n\nregister_engine(",
            1,
        )
    )
    result = CliRunner().invoke(app, ["experiment", "config", f"{module}:calc"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("engine" in line and "required" in line and "engine name" in line for line in lines)
    assert any("sampling.temperature" in line and "0.7" in line for line in lines)
    assert "prompt_text" not in result.stdout
    assert "sampling" not in [
        line.split()[1] for line in lines if line.startswith("│")
    ]  # models: their leaves only


def test_experiment_run_json_logs_prints_the_runs_events_then_a_summary(tmp_path: Path) -> None:
    module = write_experiment(tmp_path)
    out = tmp_path / "run"
    args = ["experiment", "run", f"{module}:calc", "-c", "engine=calc", "-o", str(out), "--json-logs"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-2:] == ["run_finished", "summary"]
    assert "node_progress" in kinds and "record_failed" in kinds  # boom
    summary = events[-1]
    assert (summary["pass"], summary["fail"], summary["error"], summary["cases"]) == (1, 1, 1, 3)
    assert summary["output_dir"] == str(out) and summary["cache"]["sent"] == 3
    assert result.stdout.splitlines()[-1] == str(out)


def test_experiment_run_shows_the_run_summary_and_quiet_does_not(tmp_path: Path) -> None:
    module = write_experiment(tmp_path)
    base = ["experiment", "run", f"{module}:calc", "-c", "engine=calc"]
    shown = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "a")])
    assert shown.exit_code == 0, shown.output
    assert "Running calc → " in shown.stderr  # the live display's header, as for `chainette run`
    assert "1 record(s) failed; reasons in" in shown.stderr  # and its run summary
    quiet = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "pass rate 33.3%" in quiet.stdout


def test_experiment_run_and_runs_rerun_exit_3_when_every_case_errored(tmp_path: Path) -> None:
    module = write_experiment(tmp_path)
    (tmp_path / "cases.jsonl").write_text(
        '{"id": "boom", "input": {"question": "boom 1 + 1"}, "expected": {"answer": 2}}\n'
        '{"id": "bang", "input": {"question": "boom 2 + 2"}, "expected": {"answer": 4}}\n'
    )
    out = tmp_path / "runs" / "all-errors"
    args = ["experiment", "run", f"{module}:calc", "-c", "engine=calc", "-o", str(out), "-q"]
    result = CliRunner().invoke(app, [*args, "--ledger", str(tmp_path / "ledger.sqlite")])
    assert result.exit_code == 3, result.output
    assert result.stdout.splitlines()[-1] == str(out)  # the table and the folder are printed first
    assert "Every case errored (2): exit status 3" in result.stderr
    again = CliRunner().invoke(app, ["runs", "rerun", str(out), "-o", str(tmp_path / "again"), "-q"])
    assert again.exit_code == 3, again.output
    assert "Every case errored (2)" in again.stderr
    # one case that passes is enough for 0, as `chainette run` exits 0 when some record came out
    write_experiment(tmp_path)
    some = CliRunner().invoke(app, [*args[:-3], "-o", str(tmp_path / "some"), "-q"])
    assert some.exit_code == 0, some.output
