"""An empty input is said, not a silent "0 records in": CLI summary, metadata.json and the log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tests.helpers import Question
from typer.testing import CliRunner

from chainette import Chain, apply
from chainette.cli import app

CHAIN = """
from pydantic import BaseModel
from chainette import Chain, apply

class Question(BaseModel):
    text: str

chain = Chain(name="echo", steps=[apply(lambda q: q, id="same", input_model=Question, output_model=Question)])
"""


def test_the_cli_warns_about_an_empty_input_file(tmp_path: Path) -> None:
    (tmp_path / "chain.py").write_text(CHAIN)
    (tmp_path / "in.jsonl").write_text("\n  \n")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", f"{tmp_path / 'chain.py'}:chain", "-i", str(tmp_path / "in.jsonl"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "No input records: the input file" in result.output and "in.jsonl" in result.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["records_in"] == 0 and meta["warnings"][0].startswith("No input records")


def test_an_empty_iterable_is_logged_and_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain(
        name="echo", steps=[apply(lambda q: q, id="same", input_model=Question, output_model=Question)]
    )
    with caplog.at_level(logging.WARNING, logger="chainette"):
        result = chain.run([], output_dir=tmp_path / "run")
    assert "No input records: the input held none" in caplog.text
    assert result.metadata["warnings"] == [r.getMessage() for r in caplog.records if r.name == "chainette"]
    nonempty = chain.run([Question(text="x")], output_dir=tmp_path / "run2")
    assert "warnings" not in nonempty.metadata
