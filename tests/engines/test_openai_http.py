"""The ``openai`` back-end against the stub server (real HTTP on 127.0.0.1): dialects, faults, secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tests.helpers import (
    Question,
    assert_every_record_accounted_for,
    assert_secret_nowhere,
    join_chain,
    read_jsonl,
)

from chainette import ChatRequest, EngineConfigError, SamplingParams, register_engine
from chainette.engines.openai_http import OpenAIEngine
from chainette.engines.stub_server import Faults, StubServer

SECRET = "sk-test-4f9c2a7d1e"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 20}},
    "required": ["answer"],
}


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CHAINETTE_TEST_KEY", SECRET)
    return "CHAINETTE_TEST_KEY"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(api_key=SECRET, reasoning="thinking...") as server:
        yield server


def questions(n: int) -> list[Question]:
    return [Question(text=f"Question number {i}?") for i in range(n)]


def generate(engine: OpenAIEngine, n: int = 1, schema: dict[str, object] | None = SCHEMA) -> list[str]:
    async def main() -> list[str]:
        await engine.start()
        try:
            requests = [
                ChatRequest(messages=({"role": "user", "content": f"q{i}"},), json_schema=schema)
                for i in range(n)
            ]
            return [f"{c.finish_reason}:{c.text}" for c in await engine.generate(requests)]
        finally:
            await engine.close()

    return anyio.run(main)


def test_chain_with_join_runs_through_http_and_keeps_reasoning_and_usage(
    run_dir: Path, stub: StubServer, api_key: str
) -> None:
    register_engine("remote", backend="openai", model="m", base_url=stub.base_url, api_key_env=api_key)
    result = join_chain("remote").run(questions(5), output_dir=run_dir)

    assert result.counts == {"records_in": 5, "records_out": 5, "failures": 0, "filtered": 0}
    qa_rows = read_jsonl(run_dir / "qa")
    assert all(row["_reasoning"] == "thinking..." for row in qa_rows)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["tokens"]["by_step"]["qa"]["prompt"] > 0 and meta["tokens"]["by_step"]["qa"]["completion"] > 0
    assert meta["engines"]["remote"]["base_url"] == stub.base_url
    assert stub.stats["requests"] == 20 and stub.stats["unauthorized"] == 0
    assert_secret_nowhere(run_dir, SECRET)


def test_auto_dialect_falls_through_to_one_the_server_accepts(stub: StubServer) -> None:
    stub.reject = {"json_schema"}
    stub.api_key = None
    engine = OpenAIEngine("m", base_url=stub.base_url, max_concurrency=1)
    assert all(t.startswith("stop:") for t in generate(engine, 4))
    assert stub.dialects == {"json_schema": 1, "json_object": 4}
    assert engine.describe()["dialect"] == "json_object"


@pytest.mark.parametrize(
    "dialect", ["json_schema", "json_object", "structured_outputs", "guided_json", "none"]
)
def test_named_dialect_is_sent_as_is(stub: StubServer, dialect: str) -> None:
    stub.api_key = None
    engine = OpenAIEngine("m", base_url=stub.base_url, dialect=dialect)
    texts = generate(engine, 2)
    assert stub.dialects == {dialect: 2}
    if dialect != "none":
        assert all(len(json.loads(t.removeprefix("stop:"))["answer"]) <= 20 for t in texts)


@pytest.mark.parametrize(("status", "concurrency"), [(401, 1), (403, 1), (401, 8)])
def test_an_authentication_failure_stops_the_engine_with_one_clear_error(
    run_dir: Path, stub: StubServer, monkeypatch: pytest.MonkeyPatch, status: int, concurrency: int
) -> None:
    monkeypatch.setenv("WRONG_KEY", "sk-wrong-0000")
    stub.unauthorized_status = status
    register_engine(
        "remote",
        backend="openai",
        model="m",
        base_url=stub.base_url,
        api_key_env="WRONG_KEY",
        max_concurrency=concurrency,
    )
    events: list[tuple[str, dict[str, object]]] = []
    result = join_chain("remote").run(
        questions(40), output_dir=run_dir, on_event=lambda kind, data: events.append((kind, data))
    )

    # nothing is sent after the first refusal: only the requests already in flight reached the server
    assert 1 <= stub.stats["requests"] <= concurrency
    # every record fails once, with the reason and what to do
    assert result.counts["failures"] == 40
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert len({f["_id"] for f in failures}) == 40 and all(f["node"] == "qa" for f in failures)
    reason = f"authentication failed (HTTP {status}) for engine 'remote': check the API key in $WRONG_KEY"
    assert all(f["error_type"] == "engine_error" and reason in f["message"] for f in failures)
    # ... and the run says it once: one event, one entry in metadata.json
    stopped = [data for kind, data in events if kind == "engine_failed"]
    assert len(stopped) == 1 and reason in str(stopped[0]["message"])
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert reason in meta["engines"]["remote"]["error"]
    assert_secret_nowhere(run_dir, "sk-wrong-0000")


def test_missing_key_variable_is_a_config_error_naming_it(
    stub: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    engine = OpenAIEngine("m", base_url=stub.base_url, api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(EngineConfigError, match=r"NOT_SET_ANYWHERE \(api_key_env\) is not set"):
        anyio.run(engine.start)


def test_requests_that_keep_failing_end_with_the_status_and_attempts(stub: StubServer) -> None:
    stub.api_key = None
    stub.faults = Faults(rate_429=1.0, retry_after="0")
    engine = OpenAIEngine("m", base_url=stub.base_url, max_retries=2, backoff_base=0.01)
    (text,) = generate(engine)
    assert text.startswith("error:HTTP 429") and "after 3 attempt(s)" in text
    assert stub.stats["429"] == 3


def test_unreachable_server_fails_each_request_with_the_reason() -> None:
    engine = OpenAIEngine("m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_base=0.01)
    (text,) = generate(engine)
    assert text.startswith("error:connection failed (ConnectError") and "after 2 attempt(s)" in text


def test_faults_never_lose_or_duplicate_records_and_never_leak_the_key(run_dir: Path, api_key: str) -> None:
    faults = Faults(
        rate_429=0.1, rate_500=0.1, rate_slow=0.05, rate_drop=0.1, retry_after="0.2", slow_seconds=1.5, seed=7
    )
    with StubServer(api_key=SECRET, faults=faults) as stub:
        register_engine(
            "remote",
            backend="openai",
            model="m",
            base_url=stub.base_url,
            api_key_env=api_key,
            timeout=0.5,
            max_retries=2,
            backoff_base=0.02,
            max_concurrency=8,
        )
        join_chain("remote").run(questions(60), output_dir=run_dir)

    flat, failures = assert_every_record_accounted_for(run_dir, 60)
    assert sum(stub.stats[k] for k in ("429", "500", "slow", "drop")) > 20  # faults really happened
    assert flat, "with 3 attempts most records get through"
    for failure in failures:
        assert failure["error_type"] == "engine_error" and "after 3 attempt(s)" in failure["message"]
    for step in ("qa", "to_french", "to_spanish", "summary"):
        ids = [r["_id"] for r in read_jsonl(run_dir / step)]
        assert len(ids) == len(set(ids))
    assert_secret_nowhere(run_dir, SECRET)


def test_ollama_native_request_and_answer() -> None:
    engine = OpenAIEngine("llama3.2", base_url="http://127.0.0.1:11434/v1", dialect="ollama")
    request = ChatRequest(
        messages=({"role": "user", "content": "hi"},),
        json_schema=SCHEMA,
        sampling=SamplingParams(max_tokens=7),
    )
    url, body = engine._request(request, "ollama")
    assert url == "http://127.0.0.1:11434/api/chat"
    assert body["format"] == SCHEMA and body["options"]["num_predict"] == 7 and body["stream"] is False


def test_describe_hides_credentials_in_the_url() -> None:
    engine = OpenAIEngine("m", base_url="https://user:pw@api.example.com:8443/v1?api-version=1&key=abc")
    assert engine.describe()["base_url"] == "https://user:***@api.example.com:8443/v1?api-version=1&key=***"


def test_a_query_string_in_base_url_stays_after_the_path() -> None:
    engine = OpenAIEngine("m", base_url="https://h/openai/v1/?api-version=1&key=abc")
    url, _ = engine._request(ChatRequest(messages=({"role": "user", "content": "hi"},)), "none")
    assert url == "https://h/openai/v1/chat/completions?api-version=1&key=abc"
