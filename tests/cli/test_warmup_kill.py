"""warmup → run → kill with a real llama-cpp-python server process, through the installed command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import Answer, read_jsonl

from chainette.engines import server_state, servers

pytestmark = pytest.mark.llama

CHAINETTE = str(Path(sys.executable).parent / "chainette")

CHAIN = """
from pydantic import BaseModel, Field
from chainette import Chain, SamplingParams, Step

class Question(BaseModel):
    text: str

class Answer(BaseModel):
    answer: str = Field(max_length=80)
    confidence: float

chain = Chain(name="served", steps=[Step(
    id="qa", input_model=Question, output_model=Answer, engine_name="small",
    system_prompt="Answer the question briefly.", user_prompt="Question: {{ text }}",
    sampling=SamplingParams(temperature=0, max_tokens=64),
)])
"""

ENGINES = """
engines:
  - name: small
    backend: llama_cpp
    n_ctx: 2048
    n_threads: 2
    serve:
      kind: llama_cpp
      startup_timeout: 120
"""


def chainette(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHAINETTE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not ours to kill."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def alive(pid: int) -> bool:
    return server_state.process_cmdline(pid) is not None


@pytest.mark.timeout(240)  # 6-79 s measured on a busy 2-core machine
def test_warmup_run_kill_end_to_end(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    (tmp_path / "engines.yml").write_text(ENGINES)
    (tmp_path / "chain.py").write_text(CHAIN)
    (tmp_path / "inputs.jsonl").write_text(
        '{"text": "What is the capital of France?"}\n{"text": "Name a colour."}\n'
    )

    started = chainette("warmup", "-f", "engines.yml", "-e", "small", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    (record,) = servers.list_servers()
    assert started.stdout.strip() == record.base_url and record.base_url.startswith("http://127.0.0.1:")
    assert alive(record.pid) and "llama_cpp.server" in record.cmdline
    again = chainette("warmup", "-f", "engines.yml", "-e", "small", cwd=tmp_path)  # idempotent
    assert again.returncode == 0 and servers.list_servers() == [record]

    # The chain module does not register "small" and run gets no --engines: the warmed-up server is used.
    ran = chainette("run", "chain.py:chain", "-i", "inputs.jsonl", "-o", "out", "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["engines"]["small"]["backend"] == "openai"
    assert meta["engines"]["small"]["base_url"] == record.base_url
    assert meta["counts"]["records_out"] + meta["counts"]["failures"] == 2
    for row in read_jsonl(tmp_path / "out" / "qa"):
        Answer.model_validate({k: v for k, v in row.items() if not k.startswith("_")})

    listed = chainette("engines", cwd=tmp_path)
    assert "Running servers" in listed.stdout and str(record.pid) in listed.stdout

    stopped = chainette("kill", "small", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(record.pid)
    assert servers.list_servers(alive_only=False) == []
    assert bystander.poll() is None, "kill touched a process it did not start"


def test_kill_never_signals_a_reused_pid(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    # A record whose PID now belongs to another program (the bystander): kill must leave it alone.
    state = servers.state_file()
    state.parent.mkdir(parents=True, exist_ok=True)
    fake = servers.ServerRecord(
        name="old",
        kind="llama_cpp",
        pid=bystander.pid,
        port=1,
        base_url="http://127.0.0.1:1/v1",
        model="old",
        cmdline=[sys.executable, "-m", "llama_cpp.server", "--port", "1"],
        started_at="2026-01-01T00:00:00+00:00",
        log="/dev/null",
    )
    state.write_text(json.dumps({"old": fake.model_dump()}))
    assert servers.running_engine_config("old") is None  # not ours any more: not used either

    result = chainette("kill", "--all", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no longer running" in result.stderr
    assert bystander.poll() is None
    assert json.loads(state.read_text()) == {}


def test_warmup_failure_names_the_log_and_leaves_nothing_running(tmp_path: Path) -> None:
    (tmp_path / "engines.yml").write_text(
        textwrap.dedent(
            """\
            engines:
              - name: broken
                backend: llama_cpp
                model: /nowhere/model.gguf
                serve: {kind: llama_cpp, model: /nowhere/model.gguf, startup_timeout: 60}
            """
        )
    )
    result = chainette("warmup", "-f", "engines.yml", "-e", "broken", cwd=tmp_path)
    assert result.returncode == 1
    assert "exited during startup" in result.stderr and "broken-" in result.stderr and ".log" in result.stderr
    assert servers.list_servers(alive_only=False) == []


def test_state_folder_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = servers.ServerRecord(
        name="env",
        kind="llama_cpp",
        pid=1,
        port=1,
        base_url="http://127.0.0.1:1/v1",
        model="m",
        cmdline=["nothing"],
        started_at="2026-01-01T00:00:00+00:00",
        log="/dev/null",
    )
    monkeypatch.setenv("CHAINETTE_STATE_DIR", str(tmp_path / "state"))
    assert servers.state_file() == tmp_path / "state" / "servers.json"
    servers.state_file().parent.mkdir()
    servers.state_file().write_text(json.dumps({"env": record.model_dump()}))
    assert servers.list_servers(alive_only=False) == [record]
    monkeypatch.delenv("CHAINETTE_STATE_DIR")
    monkeypatch.chdir(tmp_path)
    assert servers.state_file() == tmp_path / ".chainette" / "servers.json"
    # read where the environment says at each call: the record under the old folder is not seen now
    assert servers.list_servers(alive_only=False) == []
