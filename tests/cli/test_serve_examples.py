"""``chainette serve --example FILE``: the examples reach the page's ``/schema``; a bad one stops the start."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.cli.test_serve_cli import CHAIN
from typer.testing import CliRunner

from chainette.cli.app import app


@pytest.fixture(autouse=True)
def serving_logger_restored() -> Iterator[None]:
    """``serve`` sets up the ``chainette.serving`` logger for a process; put it back for the next tests."""
    log = logging.getLogger("chainette.serving")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate


def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Any, list[Any]]:
    (tmp_path / "served.py").write_text(CHAIN)
    monkeypatch.chdir(tmp_path)
    started: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **config: started.append(app))  # no server: the app
    result = CliRunner().invoke(app, ["serve", "served.py:chain", "--port", "0", *args])
    return result, started


def test_examples_from_files_are_offered_by_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "one.json").write_text('{"text": "first"}')
    (tmp_path / "more.jsonl").write_text('{"text": "second"}\n{"text": "third"}\n')
    result, started = serve(tmp_path, monkeypatch, "--example", "one.json", "--example", "more.jsonl")
    assert result.exit_code == 0, result.output
    with TestClient(started[0].app, base_url="http://127.0.0.1") as client:
        offered = client.get("/schema").json()["examples"]
    assert offered == [{"text": "first"}, {"text": "second"}, {"text": "third"}]


def test_an_example_that_does_not_fit_stops_the_start_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    result, started = serve(tmp_path, monkeypatch, "--example", "bad.jsonl")
    assert result.exit_code == 1 and started == []
    assert "Example 2 does not fit Question" in result.output and "text" in result.output
