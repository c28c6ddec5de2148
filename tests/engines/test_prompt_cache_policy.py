"""What ``llama_cache.PromptCache`` keeps, and where: llama.cpp's cache calls recorded, no model loaded."""

from __future__ import annotations

from typing import Any

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from chainette.engines.llama_cache import MIN_COPY, PromptCache  # noqa: E402

A = list(range(1000, 1100))  # a family's system prompt: 100 tokens
B = list(range(2000, 2100))
C = list(range(3000, 3100))


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    done: list[tuple[int, int]] = []
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", lambda *args: True)

    def seq_cp(memory: Any, source: int, target: int, p0: int, p1: int) -> None:
        done.append((source, target))

    monkeypatch.setattr(llama_cpp, "llama_memory_seq_cp", seq_cp)
    return done


def test_a_prompt_is_kept_once_per_family_and_found_again(copies: list[tuple[int, int]]) -> None:
    cache = PromptCache(memory=None, first_seq=2, size=2)
    cache.offer(0, [*A, 1, 2, 3], kept=0)
    assert copies == [(0, 2)] and cache.saves == 1
    # another question under the same system prompt: the entry holds its start already
    cache.offer(1, [*A, 4, 5, 6], kept=0)
    assert cache.saves == 1
    entry, shared = cache.best([*A, 7])
    assert entry is not None and entry.seq == 2 and shared == len(A)
    assert cache.take(entry, 0) == [*A, 1, 2, 3]
    assert copies[-1] == (2, 0) and cache.hits == 1


def test_a_short_tail_or_what_the_slot_keeps_is_not_copied(copies: list[tuple[int, int]]) -> None:
    cache = PromptCache(memory=None, first_seq=2, size=2)
    cache.offer(0, list(range(MIN_COPY - 1)), kept=0)  # too short to be worth a copy
    cache.offer(0, [*A, 1], kept=len(A))  # the slot's next request keeps the start itself
    assert copies == [] and cache.saves == 0


def test_an_entry_never_used_goes_before_one_that_was(copies: list[tuple[int, int]]) -> None:
    cache = PromptCache(memory=None, first_seq=4, size=2)
    cache.offer(0, A, kept=0)
    cache.offer(0, B, kept=0)
    entry, _ = cache.best(A)
    assert entry is not None
    cache.take(entry, 1)  # A's entry is used
    cache.offer(0, B[:40] + [9] * 80, kept=0)  # shares 40 tokens with B's entry: replaces it, the newest now
    cache.offer(0, C, kept=0)  # a new family: B's entry (never copied from) goes, not A's
    assert [e.tokens[:1] for e in cache.entries] == [[1000], [3000]]


def test_the_entry_being_copied_from_is_never_overwritten(copies: list[tuple[int, int]]) -> None:
    cache = PromptCache(memory=None, first_seq=1, size=1)
    cache.offer(0, A + [1] * 40, kept=0)
    entry, _ = cache.best(A)
    cache.offer(0, A[:40] + [5] * 80, kept=0, exclude=entry)  # shares 40 tokens: same family, but excluded
    assert cache.entries[0].tokens == A + [1] * 40 and cache.saves == 1
