"""Credentials in engine options reach the server, never an artefact: run folder, ledger, events, errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.helpers import Answer, Question, qa_step
from typer.testing import CliRunner

from chainette import Chain, Step, register_engine
from chainette.cli.app import app
from chainette.engines.stub_server import Faults, StubServer

PASSWORD = "s3cr3tpass"
QUERY_KEY = "s3cr3tkey"
BODY_KEY = "s3cr3tbody"
HEADER_TOKEN = "s3cr3ttoken"
SECRETS = (PASSWORD, QUERY_KEY, BODY_KEY, HEADER_TOKEN)


def leaks(*paths: Path) -> dict[str, list[str]]:
    """Which secrets each file (or every file under each folder) holds, read as bytes."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    found: dict[str, list[str]] = {}
    for file in files:
        data = file.read_bytes()
        hits = [s for s in SECRETS if s.encode() in data]
        if hits:
            found[str(file)] = hits
    return found


def test_credentials_in_options_reach_the_server_but_no_artefact(
    run_dir: Path, ledger_path: Path, tmp_path: Path
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    with StubServer(faults=Faults(rate_500=0.3, seed=3)) as stub:
        base_url = f"http://user:{PASSWORD}@127.0.0.1:{stub.port}/v1?api-version=2024&api-key={QUERY_KEY}"
        register_engine(
            "remote",
            backend="openai",
            model="m",
            base_url=base_url,
            extra_body={"api_key": BODY_KEY, "top_k": 20, "metadata": {"auth": {"token": HEADER_TOKEN}}},
            max_retries=0,
        )
        step = Step(
            id="qa",
            input_model=Question,
            output_model=Answer,
            engine_name="remote",
            user_prompt="Q: {{ text }}",
            on_failure="stay",  # failures are kept in the ledger too
        )
        result = Chain("secrets", [step]).run(
            [Question(text=f"q{i}") for i in range(12)],
            output_dir=run_dir,
            on_event=lambda kind, data: events.append((kind, data)),
        )

    assert result.counts["failures"] > 0 and result.counts["records_out"] > 0  # both paths were taken
    # what was kept: none of the credentials, anywhere
    assert leaks(run_dir, *ledger_path.parent.glob(ledger_path.name + "*")) == {}
    with sqlite3.connect(ledger_path) as db:  # the failures the ledger keeps name the server, masked
        messages = [m for (m,) in db.execute("SELECT message FROM failures")]
    assert messages and all(f"http://user:***@127.0.0.1:{stub.port}/v1?" in m for m in messages)
    assert not [s for s in SECRETS if s in json.dumps(events, default=str)]
    # what the server received: the credentials, as the user wrote them
    target, headers, body = stub.received[-1]
    assert target == f"/v1/chat/completions?api-version=2024&api-key={QUERY_KEY}"
    assert headers["authorization"].startswith("Basic ")  # user info is sent as Basic auth
    assert body["api_key"] == BODY_KEY and body["metadata"]["auth"]["token"] == HEADER_TOKEN
    # ... while what is not secret stays readable
    graph = json.loads((run_dir / "graph.json").read_text())
    options = graph["engines"]["remote"]["options"]
    assert options["base_url"] == (f"http://user:***@127.0.0.1:{stub.port}/v1?api-version=2024&api-key=***")
    assert options["extra_body"] == {"api_key": "***", "top_k": 20, "metadata": {"auth": "***"}}
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["engines"]["remote"]["options"] == options
    assert meta["engines"]["remote"]["base_url"] == options["base_url"]


def test_a_connection_error_names_the_server_without_its_credentials(run_dir: Path) -> None:
    # nothing listens on port 9: the connection error names the address
    register_engine(
        "remote",
        backend="openai",
        model="m",
        base_url=f"http://user:{PASSWORD}@127.0.0.1:9/v1?key={QUERY_KEY}",
        max_retries=0,
    )
    step = qa_step("remote")
    Chain("secrets", [step]).run([Question(text="q")], output_dir=run_dir)
    [failure] = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert "to http://user:***@127.0.0.1:9/v1?key=*** after 1 attempt(s)" in failure["message"]
    assert leaks(run_dir) == {}


def test_engines_command_shows_scrubbed_options() -> None:
    register_engine(
        "remote", backend="openai", model="m", base_url=f"https://u:{PASSWORD}@h/v1?token={QUERY_KEY}"
    )
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["engines"])
    assert result.exit_code == 0, result.output
    assert "u:***@h/v1?token=***" in result.output and PASSWORD not in result.output
    assert QUERY_KEY not in result.output
