"""What the experiment and run-history commands print never carries a terminal's control characters.

A judge (a model) answers a reason holding escape sequences (set the window title, write the
clipboard), a bidi override and rich markup; case ids come from the suite file. Every command that
shows them prints them as visible escapes (``\\x1b``), and ``[bold]`` as written.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chainette.cli import app

EVIL = "\x1b]0;PWNED\x07\x1b]52;c;ZXZpbA==\x07 [bold]loud[/bold] \u202etxt.exe \x9b31m"
"""Set the title, write the clipboard, rich markup, a right-to-left override, a C1 CSI."""

CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

MODULE = """
from pydantic import BaseModel

from chainette import Chain, Experiment, Step, llm_judge, register_engine

EVIL = {evil!r}


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    reply: str


class Verdict(BaseModel):
    passed: bool
    reason: str


class JudgeInput(BaseModel):
    output: dict


register_engine("echo", backend="fake", responder=lambda r: {{"reply": EVIL}})
register_engine("judge", backend="fake", responder=lambda r: {{"passed": False, "reason": EVIL}})

talk = Step(id="talk", input_model=Question, output_model=Answer, engine_name="echo", user_prompt="{{{{ text }}}}")
judge = Step(
    id="judge", input_model=JudgeInput, output_model=Verdict, engine_name="judge",
    user_prompt="{{{{ output.reply }}}}",
)
cases = [{{"id": "case" + EVIL, "input": {{"text": "hi"}}}}]
evil = Experiment("evil", Chain("evil", [talk]), cases, [llm_judge(judge)])
"""


def invoke(*args: str | Path) -> tuple[int, str]:
    done = CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args])
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done.exit_code, done.stdout + done.stderr


def assert_clean(text: str) -> None:
    found = sorted({hex(ord(c)) for c in CONTROLS.findall(text)})
    assert not found, f"raw control characters printed: {found}"


@pytest.fixture
def evil_run(tmp_path: Path) -> tuple[Path, str]:
    """The runs root holding run ``a``, and what ``experiment run`` printed."""
    module = tmp_path / "evil_experiment.py"
    module.write_text(textwrap.dedent(MODULE.format(evil=EVIL)))
    run = tmp_path / "runs" / "a"
    code, out = invoke(
        "experiment", "run", f"{module}:evil", "-o", run, "--ledger", tmp_path / "ledger.sqlite"
    )
    assert code == 0, out
    return tmp_path / "runs", out


def test_experiment_run_prints_the_judges_reason_and_case_ids_escaped(evil_run: tuple[Path, str]) -> None:
    _, out = evil_run
    assert_clean(out)  # the cases table: case id and the judge's reason
    assert "\\x1b]0;PWNED\\x07" in out and "[bold]loud[/bold]" in out and "\\u202e" in out


def test_visible_shows_controls_as_escapes_and_keeps_text() -> None:
    from chainette.cli._common import json_text, visible

    assert visible("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert visible("x\u202ey\x9b\x7f") == "x\\u202ey\\x9b\\x7f"
    assert visible("line 1\nline 2\tend") == "line 1\nline 2\tend"
    assert visible("line 1\nline 2\r", lines=False) == "line 1\\x0aline 2\\x0d"
    assert visible("héllo → ✓") == "héllo → ✓"
    assert json.loads(json_text(json.dumps({"k": EVIL}, ensure_ascii=False))) == {"k": EVIL}


def test_runs_commands_print_model_text_as_visible_escapes(evil_run: tuple[Path, str]) -> None:
    root, _ = evil_run
    run = root / "a"
    case = "case" + EVIL
    for args in (
        ("runs", "list", "--root", root),
        ("runs", "list", "--root", root, "--json"),
        ("runs", "show", run),
        ("runs", "show", run, "--json"),
        ("runs", "show", run, "--case", case),
        ("runs", "show", run, "--case", case, "--json"),
        ("runs", "show", run, "--case", "nope" + EVIL),  # the error echoes the ids
        ("runs", "summarize", run),
        ("runs", "compare", run, run),
        ("runs", "compare", run, run, "--json"),
        ("report", run, "-o", root / "report.html"),
    ):
        _, out = invoke(*args)
        assert_clean(out)
    _, out = invoke("runs", "summarize", run)
    assert "\\x1b]52;c;ZXZpbA==\\x07" in out and "[bold]loud[/bold]" in out
    _, out = invoke("runs", "show", run, "--case", case)
    assert "output:" in out and "\\x1b]0;PWNED" in out  # the output in full, escaped too
