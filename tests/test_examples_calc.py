"""examples/calc.py (GoTaglio's calc sample, ported): the suite, the two prompt styles and the
commands that compare them; on a fake engine under the example's engine name (fast), and on the
embedded engine (marker ``llama``), where only the structure is checked, never the answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import EXAMPLES, load_example
from typer.testing import CliRunner

from chainette import register_engine
from chainette.cli import app
from chainette.engines.base import ChatRequest
from chainette.experiments.history import compare_runs, load_run, restrict

STYLES = ("zero_shot", "few_shot")


def sloppy_with_examples(request: ChatRequest) -> dict[str, Any]:
    """Right on every question, except differences when the prompt shows worked examples."""
    system, question = request.messages[0]["content"], request.messages[-1]["content"]
    a, op, b = re.search(r"(\d+) ([-+*]) (\d+)", question).groups()  # type: ignore[union-attr]
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    return {"answer": value + (1 if op == "-" and "Examples:" in system else 0)}


def cli(*args: str) -> Any:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done


def run_both(experiment: Any, runs: Path, ledger: Path) -> list[Path]:
    folders = []
    for style in STYLES:
        out = runs / f"calc-{style}"
        experiment.run(out, [f"prompt={style}"], ledger=ledger, target=f"{EXAMPLES / 'calc.py'}:calc")
        folders.append(out)
    return folders


def changed_ids(a: Path, b: Path) -> list[str]:
    """The cases whose status or output differ, read from the two experiment.json files."""
    ca, cb = ({c["id"]: c for c in json.loads((p / "experiment.json").read_text())["cases"]} for p in (a, b))
    return [i for i in ca if (ca[i]["status"], ca[i]["output"]) != (cb[i]["status"], cb[i]["output"])]


def test_the_suite_is_ported_and_the_two_prompt_styles_are_compared(tmp_path: Path) -> None:
    cases = [json.loads(line) for line in (EXAMPLES / "calc.jsonl").read_text().splitlines()]
    assert 8 <= len(cases) <= 12 and all(isinstance(c["expected"]["answer"], int) for c in cases)
    example = load_example("calc")
    register_engine(example.ENGINE, backend="fake", responder=sloppy_with_examples)  # same name
    zero, few = run_both(example.calc, tmp_path / "runs", tmp_path / "ledger.sqlite")
    subtractions = [c["id"] for c in cases if " - " in c["input"]["question"]]
    assert subtractions and changed_ids(zero, few) == subtractions
    assert load_run(zero).pass_rate == 1.0
    assert load_run(few).pass_rate == round(1 - len(subtractions) / len(cases), 4)
    diff = compare_runs(load_run(zero), load_run(few))
    assert diff.config_diff == {"prompt": ("zero_shot", "few_shot")}
    out = cli("runs", "compare", str(zero), str(few)).stdout
    assert f"{len(subtractions)} changed case(s)" in out and "prompt: zero_shot → few_shot" in out
    report = tmp_path / "report.html"
    cli("report", str(few), "--compare", str(zero), "-o", str(report))
    page = report.read_text()
    assert f"Cases that changed ({len(subtractions)})" in page and 'id="timeline"' in page


@pytest.mark.llama
@pytest.mark.timeout(420)
def test_the_example_runs_both_configs_on_the_embedded_engine_and_compares_them(tmp_path: Path) -> None:
    example = load_example("calc")
    register_engine(example.ENGINE, backend="llama_cpp", n_ctx=1024, n_threads=2)
    few_cases = restrict(example.calc, ["add-small", "sub-small", "mul-small"])
    zero, few = run_both(few_cases, tmp_path / "runs", tmp_path / "ledger.sqlite")
    records = [load_run(p) for p in (zero, few)]
    for record in records:  # both recorded, every case answered and assessed or an error, timed
        assert [c["id"] for c in record.cases] == ["add-small", "sub-small", "mul-small"]
        assert all(c["status"] in ("pass", "fail", "error") for c in record.cases)
        assert record.totals["tokens"]["prompt"] > 0 and record.totals["cache"]["sent"] == 3
        assert all(c["timeline"] and c["timeline"][0]["node"] == "solve" for c in record.cases)
    assert records[0].config is not None and records[0].config["prompt"] == "zero_shot"
    changed = changed_ids(zero, few)
    diff = compare_runs(*records)
    assert [c.id for c in diff.changed] == changed  # whatever the model answered
    for change in diff.changed:
        assert (change.status_a, change.status_b) == (
            records[0].case(change.id)["status"],  # type: ignore[index]
            records[1].case(change.id)["status"],  # type: ignore[index]
        )
    out = cli("runs", "compare", str(zero), str(few)).stdout
    assert (f"{len(changed)} changed case(s)" in out) if changed else ("no case changed" in out)
    assert all(case_id in out for case_id in changed)
    report = tmp_path / "report.html"
    cli("report", str(few), "--compare", str(zero), "-o", str(report))
    page = report.read_text()
    assert (f"Cases that changed ({len(changed)})" in page) if changed else ("no-changed-cases" in page)
