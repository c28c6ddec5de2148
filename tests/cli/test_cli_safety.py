"""The chain commands and ``cache`` on hostile or broken input: control characters in names are
printed as escapes, a damaged ledger and device files give a message (exit 1), not a traceback."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from tests.helpers import cli_with_memory_cap
from typer.testing import CliRunner, Result

from chainette.cli import app
from chainette.engines.base import Completion
from chainette.ledger.store import Ledger

EVIL = "\x1b]0;PWNED\x07 [bold]loud[/bold] \u202eexe \x9b31m"
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

CHAIN = """
from pydantic import BaseModel
from chainette import Chain, Step, register_engine

class Q(BaseModel):
    text: str

class A(BaseModel):
    reply: str

register_engine("fake", backend="fake")
chain = Chain(name={name!r}, steps=[
    Step(id="ask", input_model=Q, output_model=A, engine_name={engine!r}, user_prompt="{{{{ text }}}}")
])
"""


def write_chain(folder: Path, *, name: str = "plain", engine: str = "fake") -> Path:
    path = folder / "hostile_chain.py"
    path.write_text(CHAIN.format(name=name, engine=engine))
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args])


def test_chain_names_from_a_file_are_printed_as_escapes(tmp_path: Path) -> None:
    chain = write_chain(tmp_path, name="chain" + EVIL, engine="engine" + EVIL)
    for args in (
        ("inspect-dag", chain),
        ("inspect-dag", chain, "--format", "mermaid"),
        ("inspect-dag", chain, "--format", "dot"),
        ("inspect-dag", chain, "--format", "json"),
        ("inspect", chain),  # the unknown engine: in the tree and in the error
        ("engines", "--chain", f"{chain}:chain"),
    ):
        done = invoke(*args)
        assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
        found = sorted({hex(ord(c)) for c in CONTROLS.findall(done.output)})
        assert not found, f"{args[0]} printed raw control characters {found}"
    assert "\\x1b]0;PWNED\\x07" in invoke("inspect-dag", chain).output


APPLY_CHAIN = """
from pydantic import BaseModel
from chainette import Chain, apply

class Q(BaseModel):
    text: str

def boom(q: Q) -> Q:
    raise ValueError("the model said " + {evil!r})

chain = Chain(name="chain" + {evil!r}, steps=[apply(boom, input_model=Q, output_model=Q)])
"""


def test_run_prints_failure_messages_and_names_as_escapes(tmp_path: Path) -> None:
    chain = tmp_path / "apply_chain.py"
    chain.write_text(APPLY_CHAIN.format(evil=EVIL))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "hi"}\n')
    for extra in ((), ("--json-logs",)):
        done = invoke("run", chain, "-i", inputs, "-o", tmp_path / "out", "--overwrite", "--no-cache", *extra)
        assert done.exit_code == 3, done.output  # its one record failed
        found = sorted({hex(ord(c)) for c in CONTROLS.findall(done.output)})
        assert not found, f"run {extra} printed raw control characters {found}"
    assert "the model said" in done.output


def damaged_ledger(path: Path) -> Path:
    """A real ledger whose pages after the schema are overwritten: SQLite opens it, reading fails."""
    with Ledger(path) as ledger:
        ledger.put([(f"k{i}", "e", "s", Completion(text="x" * 200)) for i in range(2000)])
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    data = bytearray(path.read_bytes())
    data[8192:] = bytes((i * 37 + 11) % 256 for i in range(len(data) - 8192))
    path.write_bytes(bytes(data))
    return path


def test_cache_info_on_a_damaged_or_garbage_ledger_is_a_message(tmp_path: Path) -> None:
    for ledger in (damaged_ledger(tmp_path / "damaged.sqlite"), tmp_path / "garbage.sqlite"):
        if not ledger.exists():
            ledger.write_bytes(b"this is no database\x00" * 200)
        done = invoke("cache", "info", "--ledger", ledger)
        assert isinstance(done.exception, SystemExit), f"not a message but {done.exception!r}"
        assert done.exit_code == 1 and str(ledger) in done.stderr, done.output
        assert "Traceback" not in done.output


@pytest.mark.parametrize("what", ["--engines", "yaml"])
def test_a_device_given_as_a_file_is_refused_before_reading(tmp_path: Path, what: str) -> None:
    if what == "--engines":
        done = cli_with_memory_cap("engines", "--engines", "/dev/zero", cwd=tmp_path)
    else:
        (tmp_path / "zero.yaml").symlink_to("/dev/zero")
        done = cli_with_memory_cap("inspect-dag", tmp_path / "zero.yaml", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert "not a regular file" in " ".join(done.stderr.split())
