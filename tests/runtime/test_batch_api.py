"""Chains on the ``openai_batch`` back-end against the stub's batch API: outputs, the ledger, expiry, crashes.

The reference for every output is the same chain on the ``openai`` back-end against the same stub
(which answers each message list the same way on both paths), so a shifted answer shows.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.helpers import Question, Summary, assert_every_record_accounted_for, join_chain, read_jsonl

from chainette import Chain, register_engine
from chainette.engines.batch_journal import BatchJournal
from chainette.engines.stub_server import BatchFaults, StubServer
from chainette.ledger.costs import DISCOUNTS, PRICES, Price, set_discount

FAST = {"poll_interval": 0.01, "poll_max": 0.02, "backoff_base": 0.01}


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        register_engine("batch", backend="openai_batch", model="m", base_url=server.base_url, **FAST)
        register_engine("sync", backend="openai", model="m", base_url=server.base_url, dialect="json_schema")
        yield server


def questions(n: int, start: int = 0) -> list[Question]:
    return [Question(text=f"Question number {i}?") for i in range(start, start + n)]


def one_step(engine: str) -> Chain:
    from tests.helpers import qa_step

    return Chain("batch qa", [qa_step(engine, prompt="Q: {{ text }}")])


def reference(chain: Chain, inputs: list[Question], folder: Path) -> list[dict[str, Any]]:
    """The flattened rows of ``chain`` run on the synchronous ``openai`` back-end."""
    chain.run(inputs, folder, cache="off")
    return by_index(read_jsonl(folder / "flattened"))


def asked(stub: StubServer, since: int = 0) -> list[str]:
    """The user messages of the batch lines the stub received after the first ``since``, by the
    question's number (records reach a batch in the order they get there, not input order)."""
    texts = [line["body"]["messages"][-1]["content"] for line in stub.batches.lines[since:]]
    return sorted(texts, key=lambda t: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", t)])


def by_index(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in input order (they land in completion order, each with ``_index``)."""
    return sorted(rows, key=lambda r: r["_index"])


def test_a_chain_with_a_join_gives_the_same_typed_rows_one_batch_per_moment(
    stub: StubServer, tmp_path: Path
) -> None:
    expected = reference(join_chain("sync"), questions(10), tmp_path / "ref")
    result = join_chain("batch").run(questions(10), tmp_path / "run")

    assert result.counts == {"records_in": 10, "records_out": 10, "failures": 0, "filtered": 0}
    assert by_index(read_jsonl(tmp_path / "run" / "flattened")) == expected  # same values, same order
    assert all(Summary.model_validate(row) for row in result.outputs("summary"))
    # the records' requests gathered into one batch per moment: qa, the two branches together
    # (pending at once, on one engine), summary
    assert stub.batches.stats["batches_created"] == 3 and stub.batches.stats["lines"] == 40
    meta = result.metadata
    assert meta["engines"]["batch"]["batches_created"] == 3 and meta["cache"]["sent"] == 40


def test_what_the_ledger_holds_is_never_submitted(stub: StubServer, tmp_path: Path) -> None:
    chain = one_step("batch")
    chain.run(questions(5), tmp_path / "half")
    assert asked(stub) == [f"Q: Question number {i}?" for i in range(5)]

    result = chain.run(questions(10), tmp_path / "all")  # half answered already
    assert asked(stub, 5) == [f"Q: Question number {i}?" for i in range(5, 10)]
    assert stub.batches.stats["batches_created"] == 2 and result.metadata["cache"]["hits"] == 5

    again = chain.run(questions(10), tmp_path / "again")  # everything answered: nothing goes out
    assert stub.batches.stats["batches_created"] == 2 and stub.batches.stats["lines"] == 10
    assert stub.batches.stats["files"] == 2
    assert again.metadata["cache"]["hits"] == 10
    assert by_index(read_jsonl(tmp_path / "again" / "flattened")) == by_index(
        read_jsonl(tmp_path / "all" / "flattened")
    )


def test_partial_expiry_fails_those_records_with_the_reason_and_a_rerun_sends_only_them(
    stub: StubServer, tmp_path: Path
) -> None:
    expected = {row["_id"]: row for row in reference(one_step("sync"), questions(16), tmp_path / "ref")}
    stub.batches.faults = BatchFaults(expire_rate=0.3, seed=1)
    run_dir = tmp_path / "run"
    one_step("batch").run(questions(16), run_dir)

    flat, failures = assert_every_record_accounted_for(run_dir, 16)
    flat = by_index(flat)
    (batch_id,) = stub.batches.batches
    assert 0 < len(failures) < 16
    for failure in failures:
        assert failure["node"] == "qa" and failure["error_type"] == "engine_error"
        assert (
            f"batch {batch_id}: batch_expired: This request could not be executed before"
            in failure["message"]
        )
    assert flat == [expected[row["_id"]] for row in flat]  # each answer is its own record's: nothing shifted
    assert [row["_id"] for row in flat] == [i for i in expected if i not in {f["_id"] for f in failures}]

    stub.batches.faults = BatchFaults()
    rerun = one_step("batch").run(questions(16), tmp_path / "rerun")
    assert stub.batches.stats["lines"] == 16 + len(failures)  # only the expired items went out again
    assert rerun.counts["failures"] == 0
    assert by_index(read_jsonl(tmp_path / "rerun" / "flattened")) == list(expected.values())


CRASH_SCRIPT = """
import sys
from chainette import Chain, register_engine
from tests.helpers import Question, qa_step

register_engine("batch", backend="openai_batch", model="m", base_url=sys.argv[1], poll_interval=0.01, poll_max=0.02)
chain = Chain("batch qa", [qa_step("batch", prompt="Q: {{ text }}")])
chain.run([Question(text=f"Question number {i}?") for i in range(6)], sys.argv[2], resume=True)
"""


@pytest.mark.timeout(120)
def test_a_run_killed_between_submit_and_download_polls_the_same_batch_when_rerun(
    stub: StubServer, tmp_path: Path
) -> None:
    expected = reference(one_step("sync"), questions(6), tmp_path / "ref")
    stub.batches.hold = True  # the batch stays in progress until released
    script, run_dir = tmp_path / "crash.py", tmp_path / "run"
    script.write_text(CRASH_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src"), *sys.path])}
    proc = subprocess.Popen([sys.executable, str(script), stub.base_url, str(run_dir)], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while stub.batches.stats["polls"] < 3:  # submitted, journalled, being polled
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the batch was not polled within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert stub.batches.stats["batches_created"] == 1 and stub.batches.stats["downloads"] == 0

    stub.batches.hold = False
    result = one_step("batch").run(questions(6), run_dir, resume=True)
    assert stub.batches.stats["batches_created"] == 1 and stub.batches.stats["lines"] == 6  # not paid twice
    # records reach the engine one by one: a busy machine may split them over two calls, each
    # attaching to the journalled batch (never a new one: created stays 1, lines 6)
    assert result.metadata["engines"]["batch"]["batches_attached"] >= 1
    assert by_index(read_jsonl(run_dir / "flattened")) == expected
    journal = BatchJournal(Path(os.environ["CHAINETTE_LEDGER"]).parent / "batches.sqlite")
    assert journal.counts() == {"delivered": 6}
    journal.close()


def test_a_cancelled_run_leaves_the_batch_running_and_the_rerun_picks_it_up(
    stub: StubServer, tmp_path: Path
) -> None:
    stub.batches.hold = True
    chain, run_dir = one_step("batch"), tmp_path / "run"

    async def cancel_while_polled() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: chain.arun(questions(4), run_dir))
            while stub.batches.stats["polls"] < 2:  # noqa: ASYNC110 - the stub's thread counts, nothing signals
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(cancel_while_polled)
    (batch,) = stub.batches.batches.values()
    assert batch["status"] == "in_progress" and stub.batches.stats["cancels"] == 0

    stub.batches.hold = False
    result = chain.run(questions(4), run_dir, resume=True)
    assert result.counts["records_out"] == 4 and stub.batches.stats["batches_created"] == 1


def twenty_per_chunk() -> Chain:
    from tests.helpers import qa_step

    return Chain("batch qa", [qa_step("batch", prompt="Q: {{ text }}")], batch_size=20)


def test_answers_of_a_batch_downloaded_before_a_kill_are_not_paid_for_again(
    stub: StubServer, tmp_path: Path
) -> None:
    """The probe's sequence: a run cut after its batch is created; ``resume`` with 10 more records
    in one chunk attaches to that batch and submits the 10 new ones, and is cut once the first
    batch is downloaded but the new one still runs; the next resume must send nothing new."""
    expected = reference(one_step("sync"), questions(20), tmp_path / "ref")
    run_dir = tmp_path / "run"
    journal = BatchJournal(Path(os.environ["CHAINETTE_LEDGER"]).parent / "batches.sqlite")

    def cut(inputs: list[Question], ready: Any) -> None:
        chain = twenty_per_chunk()  # one chunk: the resume's 20 records go in one engine call

        async def main() -> None:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: chain.arun(inputs, run_dir, resume=True))
                    while not ready():  # noqa: ASYNC110 - the stub's thread and the journal count
                        await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()  # as a kill there: nothing reaches the ledger

        anyio.run(main)

    stub.batches.hold = True
    cut(questions(10), lambda: stub.batches.stats["polls"] > 0)
    stub.batches.hold, stub.batches.hold_new = False, True  # the first batch may end, the second is held
    cut(
        questions(20),
        lambda: stub.batches.stats["batches_created"] == 2 and journal.counts().get("pending") == 10,
    )
    first, second = stub.batches.batches.values()
    assert first["status"] == "completed" and second["status"] == "in_progress"

    stub.batches.held.clear()
    stub.batches.hold_new = False
    result = twenty_per_chunk().run(questions(20), run_dir, resume=True)
    assert stub.batches.stats["batches_created"] == 2 and stub.batches.stats["lines"] == 20  # 3 and 30 before
    assert sorted(asked(stub)) == sorted(f"Q: Question number {i}?" for i in range(20))
    assert result.metadata["engines"]["batch"]["batches_from_journal"] == 10
    assert by_index(read_jsonl(run_dir / "flattened")) == expected
    assert journal.counts() == {"delivered": 20}
    journal.close()


def test_a_create_refused_for_good_fails_every_record_naming_the_batch_create(
    stub: StubServer, tmp_path: Path
) -> None:
    register_engine("batch", backend="openai_batch", model="m", base_url=stub.base_url, max_retries=0, **FAST)
    stub.batches.faults = BatchFaults(create_status=[429] * 3)
    one_step("batch").run(questions(3), tmp_path / "run")
    _, failures = assert_every_record_accounted_for(tmp_path / "run", 3)
    assert len(failures) == 3
    for failure in failures:
        assert "could not create the batch: HTTP 429" in failure["message"]
        assert "injected HTTP 429 on batch create" in failure["message"]


def test_batch_tokens_cost_half_the_list_price(
    stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(PRICES, "m", Price(1_000_000.0, 2_000_000.0))  # $1 / $2 per token: easy sums
    sync = one_step("sync").run(questions(4), tmp_path / "sync")
    batch = one_step("batch").run(questions(4), tmp_path / "batch")
    tokens = sync.metadata["cost"]["by_step"]["qa"]
    assert batch.metadata["cost"]["by_step"]["qa"]["prompt_tokens"] == tokens["prompt_tokens"] > 0
    assert batch.metadata["cost"]["usd"] == sync.metadata["cost"]["usd"] / 2

    monkeypatch.setitem(DISCOUNTS, "batch", 1.0)  # by engine name: wins over the back-end's 0.5
    again = one_step("batch").run(questions(4), tmp_path / "again", cache="off")
    assert again.metadata["cost"]["usd"] == sync.metadata["cost"]["usd"]
    with pytest.raises(ValueError, match="between 0 and 1"):
        set_discount("batch", 2.0)
