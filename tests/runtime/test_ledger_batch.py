"""The ledger work of the records in flight, gathered: few reads and transactions, same results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Answer, Question

from chainette import Chain, Step, register_engine
from chainette.ledger.store import Ledger, StoredAnswer


def qa() -> Step:
    return Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="demo", user_prompt="Q: {{ text }}"
    )


def test_a_cached_rerun_reads_the_ledger_in_few_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_engine("demo", backend="fake", max_batch_size=64, max_concurrency=8)
    n = 300
    inputs = [Question(text=f"question {i}") for i in range(n)]
    ledger = tmp_path / "ledger.db"
    chain = Chain("c", [qa()])
    chain.run(inputs, tmp_path / "run", ledger=ledger)

    reads: list[int] = []
    get_answers = Ledger.get_answers

    def counted(self: Ledger, keys: Sequence[str]) -> dict[str, StoredAnswer]:
        reads.append(len(keys))
        return get_answers(self, keys)

    monkeypatch.setattr(Ledger, "get_answers", counted)  # Ledger.get goes through it too
    result = chain.run(inputs, tmp_path / "run", ledger=ledger, resume=True)
    assert result.metadata["cache"]["hits"] == n and result.metadata["cache"]["sent"] == 0
    assert sum(reads) == n  # every key asked once
    assert len(reads) <= n // 10, f"{len(reads)} ledger reads for {n} records"


def test_a_rerun_into_a_fresh_folder_is_answered_from_the_ledger_with_few_puts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_engine("demo", backend="fake", max_batch_size=1, max_concurrency=64)
    puts: list[int] = []
    put = Ledger.put

    def counted(self: Ledger, entries: Any, *, replace: bool = False) -> None:
        entries = list(entries)
        puts.append(len(entries))
        put(self, entries, replace=replace)

    monkeypatch.setattr(Ledger, "put", counted)
    n = 200
    inputs = [Question(text=f"question {i}") for i in range(n)]
    ledger = tmp_path / "ledger.db"
    first = Chain("c", [qa()]).run(inputs, tmp_path / "one", ledger=ledger)
    assert first.metadata["cache"]["sent"] == n and sum(puts) == n
    assert len(puts) < n  # answers of calls of one request each, committed together
    again = Chain("c", [qa()]).run(inputs, tmp_path / "two", ledger=ledger)
    assert again.metadata["cache"]["hits"] == n and again.metadata["cache"]["sent"] == 0
