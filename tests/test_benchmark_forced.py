"""benchmarks/forced_bench.py: the schedule the raw llama.cpp side replays (issue 26's batching
ceiling) is read right from the engine's log of choices and forced runs. Nothing here loads a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def schedule_of(events: list[Any]) -> list[Any]:
    import forced_bench

    return list(forced_bench.schedule_of(events))


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))


def test_forced_tokens_before_the_first_choice_go_with_the_prompt() -> None:
    # '{"' 'answer' '":' forced, then a choice that forces nothing, one that forces 5, the last one
    assert schedule_of([3, "choice", 0, "choice", 5, "choice", 0]) == [3, [1, 6]]


def test_the_last_choice_needs_no_decode_even_when_it_is_the_end_of_generation() -> None:
    # an end-of-generation token is chosen but never forced after (nor appended)
    assert schedule_of([2, "choice", 0, "choice"]) == [2, [1]]


def test_free_decoding_is_one_token_per_decode() -> None:
    assert schedule_of(["choice", 0, "choice", 0, "choice", 0]) == [0, [1, 1]]
