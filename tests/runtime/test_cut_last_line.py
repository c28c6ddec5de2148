"""A run stopped while writing a row (a full disk, a killed process) leaves a cut last line: every
reader of the run folder skips it with a warning naming file and line, and still refuses a bad
line anywhere else, naming file and line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Question, qa_step, read_jsonl

from chainette import Chain, RunFolderError, register_engine
from chainette.experiments.report import write_report
from chainette.runtime.result import RunResult, read_rows

QUESTIONS = [Question(text=f"q{i}") for i in range(5)]


def cut_last_line(file: Path) -> None:
    """What a run stopped in the middle of a write leaves: half of one more row, no newline."""
    with file.open("ab") as fh:
        fh.write(b'{"_id": "cut-here", "qa.answer": "half a ro')


def fake_run(run_dir: Path, **options: Any) -> RunResult:
    register_engine("fake", backend="fake")
    return Chain("qa", [qa_step()]).run(QUESTIONS, output_dir=run_dir, **options)


def test_flattened_outputs_and_failures_skip_a_cut_last_line(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = fake_run(run_dir)
    cut_last_line(run_dir / "flattened" / "000.jsonl")
    cut_last_line(run_dir / "qa" / "000.jsonl")
    (run_dir / "failures.jsonl").write_text('{"_id": "a", "node": "qa"}\n{"_id": "b", "no')

    with caplog.at_level(logging.WARNING, logger="chainette"):
        flat = list(result.flattened())
        outputs = list(result.outputs("qa"))
        failures = list(result.failures())

    assert len(flat) == len(outputs) == 5 and all(r["_id"] != "cut-here" for r in flat + outputs)
    assert [f["_id"] for f in failures] == ["a"]
    warned = [r.getMessage() for r in caplog.records]
    assert any(f"{run_dir / 'flattened' / '000.jsonl'} line 6 was cut short" in w for w in warned)
    assert any(f"{run_dir / 'failures.jsonl'} line 2 was cut short" in w for w in warned)


def test_a_bad_line_in_the_middle_is_still_an_error_naming_file_and_line(run_dir: Path) -> None:
    fake_run(run_dir)
    part = run_dir / "flattened" / "000.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    lines[2] = '{"_id": "broken\n'
    part.write_text("".join(lines))
    with pytest.raises(RunFolderError, match=rf"{part} line 3 is not valid JSON .*--resume"):
        list(read_rows(run_dir / "flattened"))


def test_a_csv_run_skips_its_cut_last_row(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = fake_run(run_dir, fmt="csv")
    part = run_dir / "flattened" / "000.csv"
    with part.open("a", encoding="utf-8", newline="") as fh:
        fh.write('cut-here,5,"half a c')  # a row cut inside a quoted cell
    with caplog.at_level(logging.WARNING, logger="chainette"):
        rows = list(result.flattened())
    assert len(rows) == 5 and all(r["_id"] != "cut-here" for r in rows)
    assert any(f"{part} line 7 was cut short" in r.getMessage() for r in caplog.records)


def test_report_of_a_run_with_a_cut_last_line(run_dir: Path, tmp_path: Path) -> None:
    fake_run(run_dir)
    for file in (run_dir / "flattened" / "000.jsonl", run_dir / "qa" / "000.jsonl"):
        cut_last_line(file)
    (run_dir / "failures.jsonl").write_text('{"_id": "a", "node": "qa", "message": "m"}\n{"_id": "b", "no')
    page = write_report(run_dir, tmp_path / "report.html").read_text()
    assert "q0" in page and "cut-here" not in page


def test_resume_of_a_run_with_a_cut_last_line_is_exact(run_dir: Path, tmp_path: Path) -> None:
    fake_run(run_dir)
    reference = read_jsonl(run_dir / "flattened")
    meta = json.loads((run_dir / "metadata.json").read_text())
    meta["status"] = "running"  # as a killed run leaves it
    (run_dir / "metadata.json").write_text(json.dumps(meta))
    cut_last_line(run_dir / "flattened" / "000.jsonl")
    resumed = fake_run(run_dir, resume=True)
    assert resumed.metadata["cache"]["sent"] == 0
    by_index = lambda rows: sorted(rows, key=lambda r: r["_index"])  # noqa: E731  (rows land as records finish)
    assert by_index(read_jsonl(run_dir / "flattened")) == by_index(reference)
