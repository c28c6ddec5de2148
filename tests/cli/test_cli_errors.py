"""Issue 28, CLI and errors: engine definitions checked before any request, exit codes, help that
reads right at 80 columns, a busy port, the config's help column, every run folder listed."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from chainette.cli import app

CHAIN = """
from pydantic import BaseModel

from chainette import Chain, Step, register_engine

{register}


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


chain = Chain(
    name="errors-demo",
    steps=[Step(id="qa", input_model=Question, output_model=Answer, engine_name="remote", user_prompt="{{{{ text }}}}")],
)
"""


@pytest.fixture(autouse=True)
def forget_imported_chains(tmp_path: Path) -> Iterator[None]:
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def invoke(*args: str | Path, columns: int = 200) -> Result:
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def chain_file(folder: Path, register: str) -> Path:
    path = folder / "pipeline.py"
    path.write_text(CHAIN.format(register=register))
    return path


def inputs(folder: Path, count: int = 5) -> Path:
    path = folder / "inputs.jsonl"
    path.write_text("".join(json.dumps({"text": f"question {i}"}) + "\n" for i in range(count)))
    return path


def closed_port() -> int:
    """A port nothing listens on (bound, then let go): a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 1. engine definitions are checked where they are registered -----------------------------


def test_inspect_refuses_an_openai_engine_without_base_url(tmp_path: Path) -> None:
    target = chain_file(tmp_path, 'register_engine("remote", backend="openai", model="m")')

    result = invoke("inspect", f"{target}:chain")

    assert result.exit_code == 1, result.output
    assert "No errors" not in result.output
    assert "engine 'remote': backend 'openai' needs option 'base_url', which is missing" in result.stderr
    assert "base_url=" in result.stderr  # says what to write


def test_run_refuses_it_before_any_folder_or_request(tmp_path: Path) -> None:
    target = chain_file(tmp_path, 'register_engine("remote", backend="openai", model="m")')

    result = invoke("run", f"{target}:chain", "-i", inputs(tmp_path), "-o", tmp_path / "run")

    assert result.exit_code == 1
    assert "needs option 'base_url'" in result.stderr
    assert "OpenAIEngine.__init__()" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_engines_file_with_a_backend_typo_gets_a_did_you_mean(tmp_path: Path) -> None:
    target = chain_file(tmp_path, "")
    engines = tmp_path / "engines.yml"
    engines.write_text("engines:\n  - name: remote\n    backend: llamacpp\n")

    result = invoke("inspect", f"{target}:chain", "--engines", engines)

    assert result.exit_code == 1
    assert "unknown backend 'llamacpp' (did you mean 'llama_cpp'?)" in result.stderr
    assert "engine 'remote'" in result.stderr


def test_an_option_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    target = chain_file(tmp_path, "")
    engines = tmp_path / "engines.yml"
    engines.write_text(
        "engines:\n  - name: remote\n    backend: openai\n    model: m\n"
        "    base_url: http://127.0.0.1:1/v1\n    max_concurrency: 'eight'\n"
    )

    result = invoke("inspect", f"{target}:chain", "--engines", engines)

    assert result.exit_code == 1
    assert "option 'max_concurrency' of backend 'openai' is 'eight' (str)" in result.stderr
    assert "Give a value of type int" in result.stderr


# -- 2. a run in which every record failed exits 3; `sent` counts what reached a server ------


def test_server_down_every_record_fails_exit_3_and_nothing_counted_as_sent(tmp_path: Path) -> None:
    target = chain_file(tmp_path, "")
    engines = tmp_path / "engines.yml"
    engines.write_text(
        "engines:\n  - name: remote\n    backend: openai\n    model: m\n"
        f"    base_url: http://127.0.0.1:{closed_port()}/v1\n    max_retries: 1\n    backoff_base: 0.01\n"
    )
    run_dir = tmp_path / "run"

    result = invoke("run", f"{target}:chain", "-i", inputs(tmp_path), "-o", run_dir, "--engines", engines)

    assert result.exit_code == 3, result.stderr
    assert "Every record failed (5): exit status 3" in result.stderr
    assert "requests: 0 sent, 5 failed to send (no server reached)" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)  # still the last line
    cache = json.loads((run_dir / "metadata.json").read_text())["cache"]
    assert cache["sent"] == 0 and cache["unsent"] == 5


def test_a_run_with_some_records_failed_still_exits_0(tmp_path: Path) -> None:
    target = chain_file(tmp_path, 'register_engine("remote", backend="fake")')
    path = inputs(tmp_path, 3)
    path.write_text(path.read_text() + '{"wrong": 1}\n')

    result = invoke("run", f"{target}:chain", "-i", path, "-o", tmp_path / "run", "-q")

    assert result.exit_code == 0, result.stderr
    assert "1 record(s) failed" in result.stderr


def test_exit_codes_are_in_the_main_help() -> None:
    result = invoke("--help", columns=100)
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0 done" in text and "3 the run ended but every record failed" in text


# -- 3. help: flags as flags, names never cut, [ray] kept, rerun --quiet ---------------------


def _option_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^│\s+\*?\s*--", line)]


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["serve"],
        ["inspect"],
        ["experiment", "run"],
        ["runs", "rerun"],
        ["runs", "list"],
        ["warmup"],
    ],
)
def test_help_at_80_columns_cuts_no_option_name_and_gives_flags_no_type(command: list[str]) -> None:
    result = invoke(*command, "--help", columns=80)

    assert result.exit_code == 0
    assert "…" not in result.stdout, result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "<bool>" not in result.stdout


def test_run_help_shows_every_option_whole_and_keeps_brackets() -> None:
    result = invoke("run", "--help", columns=80)
    names = {match for row in _option_rows(result.stdout) for match in re.findall(r"--[a-z-]+", row)}
    assert {"--record-token-budget", "--record-deadline-s", "--max-lines-per-file", "--as-finished"} <= names
    overwrite = next(row for row in _option_rows(result.stdout) if "--overwrite" in row)
    assert "<" not in overwrite  # no value shown for a flag
    assert "chainette[ray]" in " ".join(result.stdout.split())


def test_runs_rerun_takes_quiet() -> None:
    result = invoke("runs", "rerun", "--help", columns=120)
    assert "--quiet" in result.stdout


# -- 4. a served port already in use ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_serve_on_a_busy_port_says_so_and_exits_1(tmp_path: Path) -> None:
    import chainette

    target = chain_file(tmp_path, 'register_engine("remote", backend="fake")')
    src = str(Path(chainette.__file__).resolve().parents[1])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "chainette", "serve", f"{target}:chain", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=50,
            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )

    assert done.returncode == 1, done.stderr
    message = " ".join(done.stderr.split())
    assert f"Port {port} on 127.0.0.1 is already in use" in message
    assert "--port 0 for a free one" in message


# -- 5. experiment config shows the fields' descriptions -------------------------------------

EXPERIMENT = '''
from typing import Literal

from pydantic import BaseModel, Field

from chainette import Chain, Step, register_engine
from chainette.experiments import Case, Experiment, exact

register_engine("calc", backend="fake")


class Sampling(BaseModel):
    temperature: float = 0.0
    """How random the answers are."""


class Config(BaseModel):
    prompt: Literal["zero_shot", "few_shot"] = "zero_shot"
    """Which prompt to send first."""
    engine: str = Field("calc", description="The engine's registered name.")
    sampling: Sampling = Sampling()


class Q(BaseModel):
    text: str


class A(BaseModel):
    answer: str


def build(config: Config) -> Chain:
    step = Step(id="qa", input_model=Q, output_model=A, engine_name=config.engine, user_prompt="{{ text }}")
    return Chain(name="calc", steps=[step])


calc = Experiment("calc", build, [Case("a", {"text": "1"}, expected={"answer": "1"})], [exact("answer")], Config)
'''


def test_experiment_config_shows_attribute_docstrings_and_descriptions(tmp_path: Path) -> None:
    module = tmp_path / "calc_config.py"
    module.write_text(textwrap.dedent(EXPERIMENT))

    result = invoke("experiment", "config", f"{module}:calc", columns=160)

    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "Which prompt to send first." in rows["prompt"]
    assert "The engine's registered name." in rows["engine"]
    assert "How random the answers are." in rows["sampling.temperature"]


# -- 7. runs list shows plain runs too -------------------------------------------------------


def test_runs_list_shows_plain_runs_with_a_kind_and_show_says_what_to_use(tmp_path: Path) -> None:
    target = chain_file(tmp_path, 'register_engine("remote", backend="fake")')
    root = tmp_path / "runs"
    done = invoke("run", f"{target}:chain", "-i", inputs(tmp_path, 3), "-o", root / "plain-1", "-q")
    assert done.exit_code == 0, done.stderr

    listed = invoke("runs", "list", "--root", root, columns=120)
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if "plain-1" in line)
    assert "│ run " in row and "errors-demo" in row and "│     3 │" in row

    as_json = json.loads(invoke("runs", "list", "--root", root, "--json").stdout)
    assert [(r["id"], r["kind"], r["records"]) for r in as_json] == [("plain-1", "run", 3)]

    shown = invoke("runs", "show", "plain-1", "--root", root, columns=200)
    assert shown.exit_code == 1
    message = " ".join(shown.stderr.split())
    assert "is a plain run (made by `chainette run`), not an experiment run" in message
    assert "chainette report" in message
