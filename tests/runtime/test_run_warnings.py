"""What a run says at its start (issue 27): the check's warnings, and an engine registered in code
that a ``chainette warmup`` server replaces; logged, kept in metadata.json, and shown by the CLI."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel
from tests.cli.test_serve_cli import free_port, this_env
from tests.helpers import Answer, Question, echo
from typer.testing import CliRunner

from chainette import Chain, ChainService, Step, apply, register_engine
from chainette.cli import app
from chainette.engines import server_state
from chainette.engines.stub_server import StubServer


class Loose(BaseModel):
    text: str


def loose(q: Question) -> Any:  # no output model: what follows is checked per record
    return {"text": q.text}


def unchecked_chain(engine: str = "local") -> Chain:
    step = Step(id="qa", input_model=Loose, output_model=Answer, engine_name=engine, user_prompt="{{ text }}")
    return Chain("warned", [apply(loose), step])


CHECK_WARNING = "its fit to Loose is checked per record at run time"


@pytest.fixture(autouse=True)
def local_engine() -> None:
    register_engine("local", backend="fake", responder=echo)


def test_the_checks_warnings_are_said_at_run_start_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 27: ``inspect`` showed them, ``run()`` never did."""
    assert any(CHECK_WARNING in w.message for w in unchecked_chain().check().warnings)
    events: list[tuple[str, dict[str, Any]]] = []
    with caplog.at_level(logging.WARNING, logger="chainette"):
        result = unchecked_chain().run(
            [Question(text="a")], output_dir=tmp_path / "run", on_event=lambda k, d: events.append((k, d))
        )
    assert CHECK_WARNING in caplog.text
    [warning] = result.metadata["warnings"]
    assert warning.startswith("qa: ") and CHECK_WARNING in warning
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["warnings"] == [warning]
    started = next(d for k, d in events if k == "run_started")
    assert started["warnings"] == [warning]


def record_of_this_process(name: str, base_url: str) -> server_state.ServerRecord:
    """A servers.json record that counts as running: it names this very process."""
    cmdline = server_state.process_cmdline(os.getpid())
    assert cmdline is not None
    return server_state.ServerRecord(
        name=name,
        kind="llama_cpp",
        pid=os.getpid(),
        port=int(base_url.rsplit(":", 1)[1].split("/")[0]),
        base_url=base_url,
        model=name,
        cmdline=cmdline,
        started_at="2026-01-01T00:00:00+00:00",
        log="/dev/null",
        client={"max_retries": 0},
    )


@pytest.fixture
def warmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    """A "warmup server" answering to ``local`` (a stub, recorded in ./.chainette/servers.json)."""
    monkeypatch.delenv(server_state.STATE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with StubServer() as stub:
        server_state.write_state({"local": record_of_this_process("local", stub.base_url)})
        yield stub


def qa_chain() -> Chain:
    step = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="local", user_prompt="{{ text }}"
    )
    return Chain("served", [step])


def test_an_engine_replaced_by_a_warmup_server_is_said_and_recorded(
    tmp_path: Path, warmed: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 27: the chain's fake engine silently went to the warmed server."""
    with caplog.at_level(logging.WARNING, logger="chainette"):
        result = qa_chain().run([Question(text="a")], output_dir=tmp_path / "run")
    assert warmed.stats["requests"] >= 1  # the server did answer in its place
    said = "Engine 'local' is registered in code (backend fake), but a server started by `chainette warmup`"
    assert said in caplog.text and "chainette kill local" in caplog.text
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    replaced = meta["engines"]["local"]["replaced_by_server"]
    assert replaced["base_url"] == warmed.base_url and replaced["kind"] == "llama_cpp"
    assert replaced["registered"] == {"backend": "fake", "model": None}
    assert any(said in w for w in meta["warnings"])
    assert result.metadata["engines"]["local"]["replaced_by_server"] == replaced


CLI_MODULE = """
from pydantic import BaseModel

from chainette import Chain, Step, register_engine

register_engine("local", backend="fake")


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


chain = Chain("cli", [Step(id="qa", input_model=Question, output_model=Answer, engine_name="local",
                           user_prompt="{{ text }}")])
"""


@pytest.fixture
def chain_module(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "warned_chain.py"
    path.write_text(textwrap.dedent(CLI_MODULE))
    yield path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def test_inspect_and_cli_run_say_the_engine_is_replaced(
    tmp_path: Path, warmed: StubServer, chain_module: Path
) -> None:
    runner = CliRunner(env={"COLUMNS": "400"})
    inspected = runner.invoke(app, ["inspect", f"{chain_module}:chain"])
    assert inspected.exit_code == 0, inspected.output
    assert "Warnings (1)" in inspected.stdout
    assert "Engine 'local' is registered in code (backend fake)" in inspected.stdout
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a"}\n')
    ran = runner.invoke(app, ["run", f"{chain_module}:chain", "-i", str(inputs), "-o", str(tmp_path / "run")])
    assert ran.exit_code == 0, ran.output
    said = ran.stderr.find("Engine 'local' is registered in code")
    assert 0 <= said < ran.stderr.find("1 records in"), ran.stderr  # before the run's summary


def test_a_served_chain_says_its_start_warnings_once_and_records_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 28: ``ChainService`` (``chainette serve``) said none of what a batch run says at its start."""

    async def serve() -> list[str]:
        async with ChainService(unchecked_chain(), record_to=tmp_path / "served") as service:
            trace = await service.submit({"text": "a"})
            await trace.result()
            return service.warnings

    with caplog.at_level(logging.WARNING, logger="chainette"):
        warnings = anyio.run(serve)
    [warning] = warnings
    assert warning.startswith("qa: ") and CHECK_WARNING in warning
    assert caplog.text.count(CHECK_WARNING) == 1  # once, when the service started: not per trace
    meta = json.loads((tmp_path / "served" / "metadata.json").read_text())
    assert meta["mode"] == "service" and meta["warnings"] == [warning]


def test_a_served_chain_says_its_engine_is_replaced_by_a_warmup_server(
    tmp_path: Path, warmed: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def serve() -> None:
        async with ChainService(qa_chain(), record_to=tmp_path / "served") as service:
            await (await service.submit({"text": "a"})).result()

    with caplog.at_level(logging.WARNING, logger="chainette"):
        anyio.run(serve)
    assert warmed.stats["requests"] >= 1
    said = "Engine 'local' is registered in code (backend fake), but a server started by `chainette warmup`"
    assert caplog.text.count(said) == 1
    meta = json.loads((tmp_path / "served" / "metadata.json").read_text())
    assert meta["engines"]["local"]["replaced_by_server"]["base_url"] == warmed.base_url
    assert any(said in w for w in meta["warnings"])


@pytest.mark.timeout(60)
def test_chainette_serve_says_the_start_warnings_in_its_startup_output(
    tmp_path: Path, warmed: StubServer, chain_module: Path
) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "chainette", "serve", f"{chain_module}:chain", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=this_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    said = err.find("! Engine 'local' is registered in code (backend fake)")
    assert 0 <= said < err.find("Application startup complete"), err  # before it listens
    assert err.count("is registered in code") == 1, err


def test_a_served_sink_without_a_run_folder_is_said_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``Sink`` writes through the recording's writer: served without ``record_to=`` it wrote
    nothing, silently."""
    from chainette import Sink

    monkeypatch.chdir(tmp_path)
    qa = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="local", user_prompt="{{ text }}"
    )
    chain = Chain("sunk", [qa, Sink("answers.jsonl", id="export", fields=["answer"])])

    async def serve(record_to: Path | None) -> list[str]:
        async with ChainService(chain, record_to=record_to) as service:
            await (await service.submit({"text": "a"})).result()
            return service.warnings

    with caplog.at_level(logging.WARNING, logger="chainette"):
        [warning] = anyio.run(serve, None)
    assert warning.startswith("export: this sink writes to 'answers.jsonl' only when the service records")
    assert "record_to=" in warning and "--record-to" in warning
    assert caplog.text.count("only when the service records to a run folder") == 1
    assert not list(tmp_path.rglob("answers.jsonl"))  # what the warning says: nothing written
    assert anyio.run(serve, tmp_path / "served") == []  # recorded: the Sink writes, nothing to say
    assert (tmp_path / "served" / "answers.jsonl").read_text().strip()
