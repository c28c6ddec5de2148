"""Damaged, tampered or strange run folders give a one-line error (exit 1), never a traceback or a hang.

``runs show / compare / list`` on an ``experiment.json`` with wrong types, deep nesting, a FIFO or a
link to ``/dev/zero``; ``report -o`` where nothing can be written; ``report`` on a step folder that
links out of the run folder (it stays inside: the file is left out, with a note).
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest
from tests.experiments.shared import CASES, CalcConfig, build_chain
from tests.helpers import cli_with_memory_cap
from typer.testing import CliRunner, Result

from chainette import Experiment, numeric
from chainette.cli import app


@pytest.fixture
def runs_root(tmp_path: Path, calc_engine: str) -> Path:
    """``runs/good`` and ``runs/bad``: two recorded experiment runs (``bad`` is then tampered with)."""
    experiment = Experiment("calc", build_chain, CASES, [numeric("answer")], CalcConfig)
    for name in ("good", "bad"):
        experiment.run(tmp_path / "runs" / name, [f"engine={calc_engine}"])
    return tmp_path / "runs"


def invoke(*args: str | Path) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args])


def assert_message(done: Result, *parts: str) -> None:
    """Exit 1, a deliberate exit (no exception escaped), and the message names ``parts``."""
    assert isinstance(done.exception, SystemExit), f"not a message but {done.exception!r}"
    assert done.exit_code == 1, done.output
    text = " ".join(done.stderr.split())
    assert "Traceback" not in done.output
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"


def tamper(run: Path, change: dict[str, object]) -> None:
    data = json.loads((run / "experiment.json").read_text())
    data.update(change)
    (run / "experiment.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "place"),
    [
        ({"cases": "abc"}, "cases"),
        ({"totals": [1, 2]}, "totals"),
        ({"cases": [{"id": "x", "score": "high"}]}, "cases[0].score"),
        ({"cases": [{"id": "x", "tokens": {"prompt": "many", "completion": 1}}]}, "cases[0].tokens.prompt"),
        ({"run": 5}, "run"),
    ],
)
def test_runs_show_and_compare_name_a_wrong_type_in_experiment_json(
    runs_root: Path, change: dict[str, object], place: str
) -> None:
    bad = runs_root / "bad"
    tamper(bad, change)
    for args in (
        ("runs", "show", bad),
        ("runs", "compare", runs_root / "good", bad),
        ("runs", "summarize", bad),
    ):
        assert_message(invoke(*args), "experiment.json cannot be read", place)


def test_deeply_nested_experiment_json_is_refused_with_a_message(runs_root: Path) -> None:
    bad = runs_root / "bad"
    text = (bad / "experiment.json").read_text()
    deep = "[" * 100_000 + "]" * 100_000  # past the JSON parser's recursion
    (bad / "experiment.json").write_text(text.replace("{", f'{{"deep": {deep}, ', 1))
    assert_message(invoke("runs", "show", bad), "experiment.json cannot be read", "nested deeper")
    config: object = 1
    for _ in range(200):  # parses, but each reader would recurse through it
        config = {"a": config}
    (bad / "experiment.json").write_text(text)
    tamper(bad, {"config": config})
    assert_message(invoke("runs", "compare", runs_root / "good", bad), "nested deeper")


def test_one_damaged_run_does_not_hide_the_others_in_runs_list(runs_root: Path) -> None:
    tamper(runs_root / "bad", {"cases": "abc"})
    done = invoke("runs", "list", "--root", runs_root)
    assert done.exit_code == 0, done.output
    assert "good" in done.stdout and "│ bad" not in done.stdout
    err = " ".join(done.stderr.split())
    assert "skipped" in err and str(runs_root / "bad") in err and "cases" in err
    done = invoke("runs", "list", "--root", runs_root, "--json")
    assert [r["id"] for r in json.loads(done.stdout)] == ["good"] and "skipped" in done.stderr


def test_a_fifo_named_experiment_json_is_refused_not_waited_on(runs_root: Path) -> None:
    fifo = runs_root / "bad" / "experiment.json"
    fifo.unlink()
    os.mkfifo(fifo)
    box: list[Result] = []
    worker = threading.Thread(
        target=lambda: box.append(invoke("runs", "list", "--root", runs_root)), daemon=True
    )
    worker.start()
    worker.join(30)
    if worker.is_alive():  # the old reader waits for a writer: give it one, so the thread ends
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(10)
        pytest.fail("runs list hung reading a FIFO named experiment.json")
    done = box[0]
    assert done.exit_code == 0 and "good" in done.stdout, done.output
    assert "not a regular file" in " ".join(done.stderr.split())
    assert_message(invoke("runs", "show", runs_root / "bad"), "not a regular file")


def test_an_experiment_json_linked_to_dev_zero_is_refused(runs_root: Path) -> None:
    link = runs_root / "bad" / "experiment.json"
    link.unlink()
    link.symlink_to("/dev/zero")
    done = cli_with_memory_cap("runs", "list", "--root", runs_root, cwd=runs_root)
    assert done.returncode == 0 and "MemoryError" not in done.stderr, done.stderr[-2000:]
    assert "good" in done.stdout and "not a regular file" in " ".join(done.stderr.split())


# ---------------------------------------------------------------- report


def test_report_into_a_place_that_cannot_be_written_is_a_message(runs_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "report.html"  # a path under a regular file: refused even to root
    assert_message(invoke("report", runs_root / "good", "-o", target), str(target), "-o")
    assert_message(invoke("report", runs_root / "good", "-o", tmp_path), str(tmp_path), "-o")  # a folder


def test_report_on_a_read_only_disk_is_a_message(
    runs_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    target = tmp_path / "report.html"
    assert_message(invoke("report", runs_root / "good", "-o", target), str(target), "Read-only file system")


def test_report_stays_inside_the_run_folder(runs_root: Path, tmp_path: Path) -> None:
    """A step folder replaced by a link to elsewhere is not read: its rows are not in the page."""
    run = runs_root / "good"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "part-00000.jsonl").write_text(json.dumps({"_id": "x", "answer": "SECRET-OUTSIDE"}) + "\n")
    step = run / "solve"
    for part in step.iterdir():
        part.unlink()
    step.rmdir()
    step.symlink_to(outside, target_is_directory=True)
    (run / "failures.jsonl").unlink(missing_ok=True)
    (run / "failures.jsonl").symlink_to(outside / "part-00000.jsonl")
    target = tmp_path / "report.html"
    done = invoke("report", run, "-o", target)
    assert done.exit_code == 0, done.output
    page = target.read_text()
    assert "SECRET-OUTSIDE" not in page
    assert "left out" in page and "points outside the run folder" in page
    err = " ".join(done.stderr.split())
    assert str(step) in err and "points outside the run folder" in err
