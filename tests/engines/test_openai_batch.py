"""The ``openai_batch`` back-end against the stub's files and batches endpoints (real HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from chainette import ChatRequest, EngineConfigError, SamplingParams, load_engines
from chainette.engines.batch_journal import BatchJournal
from chainette.engines.openai_batch import OpenAIBatchEngine
from chainette.engines.openai_http import OpenAIEngine
from chainette.engines.registry import create_engine
from chainette.engines.stub_server import BatchFaults, StubServer

SCHEMA = {
    "type": "object",
    "title": "Answer",
    "properties": {"answer": {"type": "string", "maxLength": 20}},
    "required": ["answer"],
}
SECRET = "sk-batch-test-7c1d9e"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def requests(n: int, start: int = 0) -> list[ChatRequest]:
    sampling = SamplingParams(max_tokens=32, stop=("\n\n",))
    return [
        ChatRequest(messages=({"role": "user", "content": f"q{i}"},), json_schema=SCHEMA, sampling=sampling)
        for i in range(start, start + n)
    ]


def engine_for(stub: StubServer, tmp_path: Path, **options: Any) -> OpenAIBatchEngine:
    options = {"poll_interval": 0.01, "poll_max": 0.02, "backoff_base": 0.01, **options}
    return OpenAIBatchEngine("m", base_url=stub.base_url, journal=str(tmp_path / "batches.sqlite"), **options)


def generate(engine: OpenAIBatchEngine, reqs: list[ChatRequest]) -> list[tuple[str, str]]:
    async def main() -> list[tuple[str, str]]:
        await engine.start()
        try:
            return [(c.finish_reason, c.text) for c in await engine.generate(reqs)]
        finally:
            await engine.close()

    return anyio.run(main)


def test_one_call_is_one_batch_of_the_openai_bodies_answered_in_order(
    stub: StubServer, tmp_path: Path
) -> None:
    reqs = requests(5)
    out = generate(engine_for(stub, tmp_path, completion_window="48h"), reqs)

    assert stub.batches.stats["batches_created"] == 1 and stub.batches.stats["lines"] == 5
    (batch,) = stub.batches.batches.values()
    assert batch["completion_window"] == "48h" and batch["endpoint"] == "/v1/chat/completions"
    assert stub.batches.files[batch["input_file_id"]][0] == "batch"  # the upload's purpose
    # each line is exactly what the openai back-end would POST, with a distinct custom_id
    sync = OpenAIEngine("m", base_url=stub.base_url, dialect="json_schema")
    assert [line["body"] for line in stub.batches.lines] == [sync._request(r, "json_schema")[1] for r in reqs]
    assert all(line["url"] == "/v1/chat/completions" for line in stub.batches.lines)
    assert len({line["custom_id"] for line in stub.batches.lines}) == 5
    # in order: the stub answers as its /chat/completions would for the same messages
    expected = [
        stub._answer(body, SCHEMA)["choices"][0]["message"]["content"]
        for body in (line["body"] for line in stub.batches.lines)
    ]
    assert out == [("stop", text) for text in expected]
    assert len(set(expected)) == 5  # distinct answers, so a shift would show


def test_a_failed_batch_gives_every_item_the_providers_reason(stub: StubServer, tmp_path: Path) -> None:
    stub.batches.faults = BatchFaults(fail_batch="line 3: model 'm' does not exist")
    out = generate(engine_for(stub, tmp_path), requests(3))
    (batch_id,) = stub.batches.batches
    assert [reason for reason, _ in out] == ["error"] * 3
    assert all(
        f"batch {batch_id} failed: batch_failed: line 3: model 'm' does not exist" in text for _, text in out
    )


def test_failing_and_expired_lines_are_errors_with_the_reason_others_answered(
    stub: StubServer, tmp_path: Path
) -> None:
    stub.batches.faults = BatchFaults(expire_rate=0.25, fail_rate=0.25, seed=3)
    out = generate(engine_for(stub, tmp_path), requests(24))
    (batch_id,) = stub.batches.batches
    expired = [t for r, t in out if r == "error" and "batch_expired" in t]
    failed = [t for r, t in out if r == "error" and "HTTP 500" in t]
    answered = [t for r, t in out if r == "stop"]
    assert expired and failed and answered and len(expired) + len(failed) + len(answered) == 24
    assert all(
        t.startswith(f"batch {batch_id}: batch_expired: This request could not be executed") for t in expired
    )
    assert all(t == f"batch {batch_id}: HTTP 500: injected fault" for t in failed)
    assert stub.batches.batches[batch_id]["status"] == "expired"


def test_create_refused_with_429_then_500_is_retried_into_one_batch(stub: StubServer, tmp_path: Path) -> None:
    stub.batches.faults = BatchFaults(create_status=[429, 500])
    engine = engine_for(stub, tmp_path)
    out = generate(engine, requests(2))
    assert [r for r, _ in out] == ["stop", "stop"]
    assert stub.batches.stats["create_refused"] == 2 and stub.batches.stats["batches_created"] == 1
    assert engine.stats["retries"] == 2


def test_a_create_refused_with_retry_after_waits_that_long(stub: StubServer, tmp_path: Path) -> None:
    stub.batches.faults = BatchFaults(create_status=[429], retry_after="0.3")
    assert [r for r, _ in generate(engine_for(stub, tmp_path), requests(1))] == ["stop"]
    first, second = stub.batches.create_times
    assert second - first >= 0.3  # the backoff alone would be at most backoff_base (0.01 s)


def test_create_refused_for_good_names_what_failed_and_the_status(stub: StubServer, tmp_path: Path) -> None:
    stub.batches.faults = BatchFaults(create_status=[500] * 10)
    out = generate(engine_for(stub, tmp_path, max_retries=1), requests(2))
    assert stub.batches.stats["batches_created"] == 0
    for reason, text in out:
        assert reason == "error"
        assert text.startswith("could not create the batch: HTTP 500 from http://127.0.0.1:")
        assert text.endswith("injected HTTP 500 on batch create after 2 attempt(s)")


def test_a_lost_create_answer_adopts_the_batch_it_made(stub: StubServer, tmp_path: Path) -> None:
    stub.batches.faults = BatchFaults(lose_create=1)  # the batch is made, the answer never arrives
    out = generate(engine_for(stub, tmp_path), requests(3))
    assert [r for r, _ in out] == ["stop"] * 3
    assert stub.batches.stats["batches_created"] == 1  # the retry found it instead of paying again


def test_a_malformed_output_line_names_the_batch_file_and_line(stub: StubServer, tmp_path: Path) -> None:
    stub.batches.faults = BatchFaults(malformed_lines=1)
    out = generate(engine_for(stub, tmp_path), requests(3))
    (batch_id,) = stub.batches.batches
    output_file = stub.batches.batches[batch_id]["output_file_id"]
    assert [r for r, _ in out] == ["error", "stop", "stop"]
    text = out[0][1]
    assert text.startswith(f"batch {batch_id} ended completed without a result for this request; ")
    assert f"batch {batch_id}, output file {output_file} line 1 is not a result line (JSONDecodeError" in text


def test_the_key_is_checked_and_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_KEY", SECRET)
    with StubServer(api_key=SECRET) as stub:
        engine = engine_for(stub, tmp_path, api_key_env="BATCH_KEY")
        assert [r for r, _ in generate(engine, requests(2))] == ["stop", "stop"]
        monkeypatch.setenv("BATCH_KEY", "sk-wrong-key-000")
        out = generate(engine_for(stub, tmp_path, api_key_env="BATCH_KEY"), requests(1, start=5))
    assert out[0][0] == "error" and "authentication failed (HTTP 401)" in out[0][1]
    assert SECRET.encode() not in (tmp_path / "batches.sqlite").read_bytes()


def test_dialects_that_need_a_conversation_are_refused() -> None:
    with pytest.raises(EngineConfigError, match="dialect 'auto' cannot be used with a batch API"):
        OpenAIBatchEngine("m", base_url="http://127.0.0.1:1/v1", dialect="auto")


def test_a_poll_that_keeps_failing_keeps_the_batch_for_the_next_call(
    stub: StubServer, tmp_path: Path
) -> None:
    stub.batches.faults = BatchFaults(poll_status=[500, 502])
    out = generate(engine_for(stub, tmp_path, max_retries=1), requests(2))
    (batch_id,) = stub.batches.batches
    for reason, text in out:
        assert reason == "error"
        assert text.startswith(f"could not poll batch {batch_id}: HTTP 502 from http://127.0.0.1:")
        assert text.endswith(f"in the journal {tmp_path / 'batches.sqlite'}: run again to pick it up")

    again = generate(engine_for(stub, tmp_path), requests(2))  # the next call polls the same batch
    assert [r for r, _ in again] == ["stop", "stop"] and stub.batches.stats["batches_created"] == 1


def test_a_batch_the_provider_does_not_know_is_sent_again_on_the_next_call(
    stub: StubServer, tmp_path: Path
) -> None:
    stub.batches.hold = True
    engine = engine_for(stub, tmp_path)

    async def main() -> list[tuple[str, str]]:
        await engine.start()
        try:
            with anyio.move_on_after(30):
                async with anyio.create_task_group() as tg:  # submitted, then the call is cancelled
                    tg.start_soon(engine.generate, requests(2))
                    while not stub.batches.stats["polls"]:  # noqa: ASYNC110 - the stub's thread counts
                        await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()
            stub.batches.batches.clear()  # the provider lost it (deleted, another account)
            stub.batches.hold = False
            lost = await engine.generate(requests(2))
            return [(c.finish_reason, c.text) for c in [*lost, *await engine.generate(requests(2))]]
        finally:
            await engine.close()

    out = anyio.run(main)
    assert all(r == "error" and "batch batch_2 is unknown to http://127.0.0.1:" in t for r, t in out[:2])
    assert all(t.endswith("Run again to send it in a new batch.") for _, t in out[:2])
    assert [r for r, _ in out[2:]] == ["stop", "stop"] and stub.batches.stats["batches_created"] == 2


def test_a_create_cut_short_is_found_by_its_input_file_on_the_next_call(
    stub: StubServer, tmp_path: Path
) -> None:
    stub.batches.faults = BatchFaults(lose_create=1)  # made at the provider, the answer lost, not retried
    out = generate(engine_for(stub, tmp_path, max_retries=0), requests(3))
    assert all(r == "error" and t.startswith("could not create the batch: connection failed") for r, t in out)

    again = generate(engine_for(stub, tmp_path), requests(3))
    assert [r for r, _ in again] == ["stop"] * 3
    assert stub.batches.stats["batches_created"] == 1 and stub.batches.stats["lines"] == 3


def test_a_create_that_never_made_its_batch_is_sent_in_a_new_one(stub: StubServer, tmp_path: Path) -> None:
    stub.batches.faults = BatchFaults(create_status=[500])
    generate(engine_for(stub, tmp_path, max_retries=0), requests(3))
    assert stub.batches.stats["batches_created"] == 0

    again = generate(engine_for(stub, tmp_path), requests(3))
    assert [r for r, _ in again] == ["stop"] * 3 and stub.batches.stats["batches_created"] == 1


def test_engines_yml_defines_a_batch_engine_and_checks_its_options(tmp_path: Path) -> None:
    path = tmp_path / "engines.yml"
    path.write_text(
        "engines:\n  - name: cheap\n    backend: openai_batch\n    model: gpt-4o-mini\n"
        "    base_url: https://api.openai.com/v1\n    api_key_env: OPENAI_API_KEY\n"
        "    completion_window: 24h\n    poll_interval: 15\n    poll_max: 300\n"
    )
    (config,) = load_engines(path)
    engine = create_engine(config)
    assert isinstance(engine, OpenAIBatchEngine) and engine.max_batch_size == 50_000
    path.write_text(path.read_text().replace("poll_interval", "poll_intervall"))
    with pytest.raises(
        EngineConfigError,
        match=r"unknown option 'poll_intervall' for backend 'openai_batch' \(did you mean 'poll_interval'\?\)",
    ):
        load_engines(path)


def test_a_batch_ends_only_after_its_polls_and_its_delay(tmp_path: Path) -> None:
    with StubServer(batch_polls=3, batch_delay=0.2) as stub:
        out = generate(engine_for(stub, tmp_path), requests(2))
        (batch,) = stub.batches.batches.values()
    assert [r for r, _ in out] == ["stop", "stop"] and batch["status"] == "completed"
    assert stub.batches.stats["polls"] >= 4  # 3 polls saw it in progress; a later one ended it
    assert batch["completed_at"] - batch["created_at"] >= 0.2  # and never before its delay


def test_a_batch_cancelled_at_the_provider_fails_its_items_with_the_reason(
    stub: StubServer, tmp_path: Path
) -> None:
    import httpx

    stub.batches.hold = True
    engine = engine_for(stub, tmp_path)

    async def main() -> list[tuple[str, str]]:
        await engine.start()
        try:
            async with anyio.create_task_group() as tg:
                out: list[tuple[str, str]] = []

                async def ask() -> None:
                    out.extend((c.finish_reason, c.text) for c in await engine.generate(requests(3)))

                tg.start_soon(ask)
                while not stub.batches.stats["polls"]:  # noqa: ASYNC110 - the stub's thread counts
                    await anyio.sleep(0.01)
                (batch_id,) = stub.batches.batches
                async with httpx.AsyncClient() as client:  # someone cancels it with the provider's tools
                    answer = await client.post(f"{stub.base_url}/batches/{batch_id}/cancel")
                assert answer.json()["status"] == "cancelling"
            return out
        finally:
            await engine.close()

    out = anyio.run(main)
    (batch_id,) = stub.batches.batches
    assert stub.batches.stats["cancels"] == 1 and stub.batches.batches[batch_id]["status"] == "cancelled"
    assert out == [("error", f"batch {batch_id}: batch_cancelled: cancelled")] * 3


def test_answers_downloaded_while_another_batch_runs_are_never_paid_for_again(
    stub: StubServer, tmp_path: Path
) -> None:
    """The probe's sequence: a call cut after its batch is created; the next call (10 more
    requests) attaches to it and submits a new batch, and is cut once the first is downloaded
    while the new one still runs; the third call must neither resubmit the first 10 nor make a
    third batch: each distinct request is paid for once."""
    stub.batches.hold = True

    async def cut_when(engine: OpenAIBatchEngine, reqs: list[ChatRequest], ready: Any) -> None:
        await engine.start()
        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(engine.generate, reqs)
                    while not ready():  # noqa: ASYNC110 - the stub's thread and the journal count
                        await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()  # as a kill there: nothing handed over
        finally:
            await engine.close()

    first = engine_for(stub, tmp_path)
    anyio.run(cut_when, first, requests(10), lambda: stub.batches.stats["polls"] > 0)
    stub.batches.hold, stub.batches.hold_new = False, True  # the first batch may end, the next is held
    second = engine_for(stub, tmp_path)
    journal = BatchJournal(tmp_path / "batches.sqlite")

    def first_downloaded_second_running() -> bool:
        return stub.batches.stats["batches_created"] == 2 and journal.counts().get("pending") == 10

    anyio.run(cut_when, second, requests(20), first_downloaded_second_running)
    first_batch, second_batch = stub.batches.batches.values()
    assert first_batch["status"] == "completed" and second_batch["status"] == "in_progress"

    stub.batches.held.clear()
    stub.batches.hold_new = False
    out = generate(engine_for(stub, tmp_path), requests(20))
    assert stub.batches.stats["batches_created"] == 2 and stub.batches.stats["lines"] == 20
    assert len({line["custom_id"].partition("-")[2] for line in stub.batches.lines}) == 20
    expected = [
        stub._answer(body, SCHEMA)["choices"][0]["message"]["content"]
        for body in (line["body"] for line in stub.batches.lines)
    ]
    assert sorted(out) == sorted(("stop", text) for text in expected)
    assert journal.counts() == {"delivered": 20}  # handed over and the engine closed: copies dropped
    journal.close()
