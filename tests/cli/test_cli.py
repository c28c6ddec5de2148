"""The ``chainette`` command line, driven through typer's CliRunner on a real chain module."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from chainette import Chain, __version__
from chainette.cli import app
from chainette.engines.stub_server import StubServer

CHAIN_MODULE = """
from pydantic import BaseModel

from chainette import Branch, Chain, Step, apply, register_engine

register_engine("fake", backend="fake")


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


class Translation(BaseModel):
    translated: str


def tidy(answer: Answer) -> Answer:
    return Answer(answer=answer.answer.strip())


qa = Step(id="qa", input_model=Question, output_model=Answer, engine_name="{engine}",
          user_prompt="{prompt}")
fr = Step(id="to_fr", input_model=Answer, output_model=Translation, engine_name="fake",
          user_prompt="Translate: {{{{ answer }}}}")
chain = Chain(name="cli demo", steps=[qa, [Branch(name="french", steps=[fr]).join("fr")], apply(tidy)])
"""


def write_chain(
    folder: Path, *, engine: str = "fake", prompt: str = "Q: {{ text }}", name: str = "pipeline"
) -> Path:
    path = folder / f"{name}.py"
    path.write_text(CHAIN_MODULE.format(engine=engine, prompt=prompt))
    return path


def write_inputs(folder: Path, lines: list[str]) -> Path:
    path = folder / "inputs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


QUESTIONS = [json.dumps({"text": f"question {i}"}) for i in range(5)]


@pytest.fixture(autouse=True)
def forget_imported_chains(tmp_path: Path) -> Iterator[None]:
    """Chain files imported by a test leave sys.modules as they found it."""
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def invoke(*args: str | Path) -> Result:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(a) for a in args])
    # A crash is exit 1 too: only a deliberate exit (typer.Exit / sys.exit) counts.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_run_writes_run_folder_and_prints_its_path_last(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS)
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir)

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["status"] == "completed"
    assert metadata["counts"]["records_out"] == 5
    assert len((run_dir / "flattened" / "000.jsonl").read_text().splitlines()) == 5
    assert "5 records in, 5 out, 0 failed" in result.stderr
    assert "tokens:" in result.stderr


@pytest.mark.parametrize("flag", ["--output_dir", "--output-dir", "-o"])
def test_run_output_dir_takes_the_seed_spelling_too(tmp_path: Path, flag: str) -> None:
    """The seed's README: chainette run examples.qa:my_chain -i inputs.json --output_dir results."""
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS)
    run_dir = tmp_path / "results"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, flag, run_dir, "--batch_size", "2", "-q")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["status"] == "completed" and metadata["counts"]["records_out"] == 5
    assert metadata["config"]["batch_size"] == 2  # --batch_size: every option takes underscores


def test_underscore_spelling_still_rejects_unknown_options(tmp_path: Path) -> None:
    result = invoke("run", f"{write_chain(tmp_path)}:chain", "-i", "x.jsonl", "--output_dirx", "r")
    assert result.exit_code == 2 and "No such option" in result.stderr


def test_run_with_failed_records_exits_0_and_says_where_they_are(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, [*QUESTIONS, "{not json", json.dumps({"wrong": 1})])
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir)

    assert result.exit_code == 0, result.stderr
    assert "2 record(s) failed" in result.stderr
    assert str(run_dir / "failures.jsonl") in result.stderr
    assert len((run_dir / "failures.jsonl").read_text().splitlines()) == 2
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)


def test_run_with_a_missing_input_file_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", tmp_path / "nope.jsonl", "-o", run_dir)

    assert result.exit_code == 1
    assert "nope.jsonl" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not run_dir.exists()


def test_run_with_an_unknown_engine_names_the_registered_ones_and_writes_nothing(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path, engine="fake_typo")
    inputs = write_inputs(tmp_path, QUESTIONS)
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir)

    assert result.exit_code == 1
    assert "'fake_typo'" in result.stderr
    assert "Registered engines: 'fake'" in result.stderr
    assert "Traceback" not in result.output
    assert not run_dir.exists()


def test_run_engines_file_supplies_a_missing_engine(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path, engine="from_yaml")
    inputs = write_inputs(tmp_path, QUESTIONS)
    engines = tmp_path / "engines.yml"
    engines.write_text("engines:\n  - name: from_yaml\n    backend: fake\n")

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", tmp_path / "run", "--engines", engines)

    assert result.exit_code == 0, result.stderr


def test_run_batch_size_overrides_the_chain(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS)
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir, "--batch-size", "2", "-q")

    assert result.exit_code == 0, result.stderr
    assert json.loads((run_dir / "metadata.json").read_text())["config"]["batch_size"] == 2


def test_run_record_limits_reach_the_run(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS[:2])
    run_dir = tmp_path / "run"
    args = ["--record-deadline-s", "60", "--record-token-budget", "1", "-q"]

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir, *args)

    assert result.exit_code == 3, result.stderr  # every record failed (exit codes: cli/_common.py)
    config = json.loads((run_dir / "metadata.json").read_text())["config"]
    assert config["record_deadline_s"] == 60 and config["record_token_budget"] == 1
    failures = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    # qa's answer spends the one token: the next node refuses each record
    assert [f["error_type"] for f in failures] == ["budget_exceeded"] * 2
    assert all("token budget of 1 exceeded" in f["message"] for f in failures)


def test_run_quiet_prints_only_the_run_folder(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS)
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir, "--quiet")

    assert result.exit_code == 0
    assert result.stdout == f"{run_dir}\n"
    assert result.stderr == ""


def test_run_json_logs_prints_one_json_event_per_line(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS)
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir, "--json-logs")

    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-2:] == ["run_finished", "summary"]
    assert {"engine_started", "node_progress"} <= set(kinds)
    assert {e["node"] for e in events if e["event"] == "node_progress"} == {"qa", "to_fr", "tidy"}
    assert events[-1]["counts"]["records_out"] == 5
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)


def test_run_format_option_is_passed_through(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS)
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir, "--format", "csv", "-q")

    assert result.exit_code == 0, result.stderr
    assert (run_dir / "flattened" / "000.csv").is_file()


def test_inspect_names_the_step_and_the_bad_field(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path, prompt="Q: {{ answr }}")

    result = invoke("inspect", f"{chain_file}:chain")

    assert result.exit_code == 1
    assert "Step 'qa' user_prompt line 1 uses {{ answr }}" in result.stdout
    assert "no field 'answr'" in result.stdout
    assert "1 error(s)" in result.stdout


def test_inspect_passes_a_good_chain_and_draws_it(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)

    result = invoke("inspect", f"{chain_file}:chain")

    assert result.exit_code == 0, result.output
    assert "qa step Question → Answer  engine fake" in result.stdout
    assert "branch french → joined as fr" in result.stdout
    assert "tidy apply Answer → Answer" in result.stdout
    assert "No errors" in result.stdout


def test_inspect_reports_an_unknown_engine_as_an_error(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path, engine="missing_engine")

    result = invoke("inspect", f"{chain_file}:chain")

    assert result.exit_code == 1
    assert "'missing_engine'" in result.stdout and "not registered" in result.stdout


def test_inspect_dag_mermaid(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)

    result = invoke("inspect-dag", f"{chain_file}:chain", "--format", "mermaid")

    assert result.exit_code == 0
    assert result.stdout.startswith("flowchart")
    assert "qa --> to_fr" in result.stdout


def test_inspect_dag_json_is_the_described_graph(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)

    result = invoke("inspect-dag", f"{chain_file}:chain", "--format", "json")

    assert result.exit_code == 0
    graph = json.loads(result.stdout)
    assert [n["id"] for n in graph["nodes"]] == ["qa", "to_fr", "tidy"]


def test_engines_lists_an_engine_from_a_yaml_file_without_secrets(
    tmp_path: Path, recording_backend: object
) -> None:
    # `recording` takes any option, so a key passed as an option gets this far and must be masked.
    engines = tmp_path / "engines.yml"
    engines.write_text(
        textwrap.dedent(
            """\
            engines:
              - name: yaml_engine
                backend: recording
                model: tiny-model
                latency: 0.5
                api_key: sk-very-secret
            """
        )
    )

    result = invoke("engines", "--engines", engines)

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "yaml_engine" in line)
    assert "recording" in row and "tiny-model" in row and "latency=0.5" in row and "'***'" in row
    assert "sk-very-secret" not in result.stdout
    assert "Back-ends: fake, llama_cpp, openai, openai_batch, recording, vllm" in result.stdout


def test_engines_with_a_chain_shows_which_steps_use_them(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path, engine="unregistered")

    result = invoke("engines", "--chain", f"{chain_file}:chain")

    assert result.exit_code == 0, result.output
    fake_row = next(line for line in result.stdout.splitlines() if "│ fake" in line)
    assert "to_fr" in fake_row
    missing_row = next(line for line in result.stdout.splitlines() if "unregistered" in line)
    assert "not registered" in missing_row and "qa" in missing_row


def test_missing_attribute_lists_the_chains_the_module_has(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)

    result = invoke("inspect", f"{chain_file}:chian")

    assert result.exit_code == 1
    assert "has no attribute 'chian'" in result.stderr
    assert "Chain objects it defines at module level: chain" in result.stderr
    assert f"Did you mean {chain_file}:chain?" in result.stderr


def test_missing_file_and_missing_module_say_what_was_tried(tmp_path: Path) -> None:
    missing_file = invoke("inspect-dag", f"{tmp_path / 'absent.py'}:chain")
    missing_module = invoke("inspect-dag", "no_such_pkg_for_cli_tests.chains:chain")

    assert missing_file.exit_code == 1 and "No such file" in missing_file.stderr
    assert "absent.py" in missing_file.stderr
    assert missing_module.exit_code == 1
    assert "No module named 'no_such_pkg_for_cli_tests'" in missing_module.stderr
    assert "path/to/chains.py:chain_variable" in missing_module.stderr


def test_a_module_that_fails_to_import_is_reported_with_its_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import os\n\nvalue = undefined_name + 1\n")

    result = invoke("inspect", f"{broken}:chain")

    assert result.exit_code == 1
    assert "NameError" in result.stderr and "line 3" in result.stderr


def test_a_chain_definition_error_at_import_keeps_its_message(tmp_path: Path) -> None:
    bad = tmp_path / "dupes.py"
    bad.write_text(
        "from chainette import Chain, apply\n\n"
        "def f(x: dict) -> dict:\n    return x\n\n"
        "chain = Chain(name='d', steps=[apply(f), apply(f)])\n"
    )

    result = invoke("inspect", f"{bad}:chain")

    assert result.exit_code == 1
    assert "ids must be unique" in result.stderr and "used more than once: f" in result.stderr
    assert "line 6" in result.stderr


def test_module_target_and_sibling_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cli_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_chain(package, name="chains")
    monkeypatch.chdir(tmp_path)

    by_module = invoke("inspect-dag", "cli_test_pkg.chains:chain", "--format", "json")
    # A file whose chain comes from a sibling module, which only imports with the file's folder on sys.path.
    (package / "uses_sibling.py").write_text("from chains import chain as imported_chain\n")
    by_file = invoke("inspect-dag", str(package / "uses_sibling.py"), "--format", "json")

    assert by_module.exit_code == 0, by_module.stderr
    assert json.loads(by_module.stdout)["name"] == "cli demo"
    assert by_file.exit_code == 0, by_file.stderr
    assert json.loads(by_file.stdout)["name"] == "cli demo"
    assert str(package) not in sys.path


def test_version() -> None:
    result = invoke("--version")

    assert result.exit_code == 0
    assert result.stdout.strip() == f"chainette {__version__}"


@pytest.mark.parametrize("command", ["run", "inspect", "inspect-dag", "engines"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = invoke(command, "--help")

    assert result.exit_code == 0
    assert "Example" in result.stdout and f"chainette {command}" in result.stdout


def test_an_error_during_the_run_points_at_the_partial_run_folder(tmp_path: Path) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, [*QUESTIONS, "{not json"])
    run_dir = tmp_path / "run"

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", run_dir, "--strict")

    assert result.exit_code == 1
    assert "inputs.jsonl line 6: not valid JSON" in result.stderr
    assert f"What was written before the error is in {run_dir}" in result.stderr
    assert json.loads((run_dir / "metadata.json").read_text())["status"] == "failed"
    assert result.stdout == ""


def test_ctrl_c_exits_130_and_says_where_the_partial_run_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain_file = write_chain(tmp_path)
    inputs = write_inputs(tmp_path, QUESTIONS)

    def interrupted_run(chain: Chain, inputs: object, output_dir: object, **options: Any) -> None:
        options["on_event"]("run_started", {"chain": chain.name, "output_dir": str(output_dir), "nodes": []})
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["chainette.cli.app"], "_run_blocking", interrupted_run)

    result = invoke("run", f"{chain_file}:chain", "-i", inputs, "-o", tmp_path / "run")

    assert result.exit_code == 130
    assert f"Interrupted. Partial results are in {tmp_path / 'run'}" in result.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_an_engine_refusing_the_key_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    monkeypatch.setenv("WRONG_KEY", "sk-wrong-0000")
    chain_file = write_chain(tmp_path, engine="remote")
    inputs = write_inputs(tmp_path, [json.dumps({"text": f"question {i}"}) for i in range(20)])
    with StubServer(api_key="sk-right") as stub:
        engines = tmp_path / "engines.yml"
        engines.write_text(
            "engines:\n  - name: remote\n    backend: openai\n    model: m\n"
            f"    base_url: {stub.base_url}\n    api_key_env: WRONG_KEY\n    max_concurrency: 1\n"
        )
        args = ["run", chain_file, "-i", inputs, "-o", tmp_path / "run", "--engines", engines]
        result = invoke(*args, *(["--quiet"] if quiet else []))

    assert result.exit_code == 3, result.stderr  # every record failed
    assert stub.stats["requests"] == 1
    reason = "authentication failed (HTTP 401) for engine 'remote': check the API key in $WRONG_KEY"
    assert result.stderr.count(reason) == 1, result.stderr
    assert "20 record(s) failed" in result.stderr
