"""Prompts kept across requests: cached sequences beside the decoding slots of a batch decoder.

A slot of :class:`.llama_batch.BatchDecoder` keeps the cells of its last request until another
request takes it, so a prompt that starts like the one before reuses its start. Under a mix of
prompts that is not enough: a chain's steps each have their own system prompt, their requests
come at different times (records move on one by one), and the next request into a slot drops
what it held. :class:`PromptCache` keeps a few sequences more, outside the batch: before a
slot's cells are dropped, a start of them that no entry holds yet is copied into an entry (one
``llama_memory_seq_cp`` of the slot's stream), and a new request whose prompt starts like an
entry copies the entry into its slot instead of evaluating that start again.

Exactness: an entry is a copy of cells a slot computed, and a copy holds the same values, so a
request starting from an entry holds what evaluating its prompt there would leave (prompts go in
chunks below llama.cpp's tiled attention, :data:`.llama_passes.PROMPT_CHUNK`, so how a start
was split does not change its cells). Greedy answers are the same with and without the cache.

Bound: ``size`` entries, each one more cache stream of ``n_ctx`` cells (the context is created
with ``parallel + size`` streams; about 47 MB each on the bundled model at ``n_ctx=2048``).
What goes where:

- a slot's cells are offered when they would be dropped; nothing is copied when an entry (or
  what the slot keeps for its next request) already holds all but :data:`MIN_COPY` of them, or at
  least half of them and :data:`MIN_COPY` (a shared system prompt is held once, not once per
  question asked under it);
- an entry sharing at least :data:`MIN_COPY` tokens with the offered cells is replaced by them
  (one entry per family of prompts); otherwise an empty entry, else the least recently used
  entry never copied from, else the least recently used one.

Runs on the decoder's loop thread only. Imported only when the ``llama_cpp`` back-end starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from .llama_jobs import common_prefix

__all__ = ["MIN_COPY", "Entry", "PromptCache", "copy_stream"]

MIN_COPY = 32
"""Shortest shared prompt start worth copying a cache stream for (a copy moves the whole stream,
``n_ctx`` cells: about 47 MB on the bundled model at n_ctx=2048, a few ms)."""


def copy_stream(memory: Any, source: int, target: int) -> None:
    """Give sequence ``target`` a copy of ``source``'s cache stream (llama.cpp copies the data
    before the next decode, in the order the copies were asked for)."""
    llama_cpp.llama_memory_seq_rm(memory, target, -1, -1)
    llama_cpp.llama_memory_seq_cp(memory, source, target, -1, -1)


@dataclass(eq=False)
class Entry:
    seq: int
    tokens: list[int] = field(default_factory=list)
    """Tokens whose cells this sequence holds, in order (empty: a free entry)."""
    used: int = 0
    """When it was last saved, hit or copied from (the cache's clock)."""
    hits: int = 0
    """Requests that started from it since it was saved."""


class PromptCache:
    """``size`` cached sequences, ids ``first_seq`` on, never decoded: only copied to and from."""

    def __init__(self, memory: Any, first_seq: int, size: int) -> None:
        self.memory = memory
        self.entries = [Entry(first_seq + i) for i in range(size)]
        self._clock = 0
        self.saves = 0
        """Slot streams copied into an entry."""
        self.hits = 0
        """Requests that started from an entry (a copy instead of evaluating that start)."""

    def best(self, tokens: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest start with ``tokens``, and how many tokens it shares."""
        found, longest = None, 0
        for entry in self.entries:
            n = common_prefix(entry.tokens, tokens)
            if n > longest:
                found, longest = entry, n
        return found, longest

    def take(self, entry: Entry, target: int) -> list[int]:
        """Copy ``entry`` into sequence ``target``; the tokens it now holds."""
        copy_stream(self.memory, entry.seq, target)
        entry.hits += 1
        self.hits += 1
        self._touch(entry)
        return list(entry.tokens)

    def offer(self, seq: int, tokens: list[int], kept: int, exclude: Entry | None = None) -> None:
        """Sequence ``seq`` (holding ``tokens``) is about to lose its cells past ``kept``: copy
        them into an entry unless the entries (or ``kept``) hold them already (see the module)."""
        if not self.entries or len(tokens) - kept < MIN_COPY:
            return
        entry, held = self.best(tokens)
        covered = max(kept, held)
        if len(tokens) - covered < MIN_COPY or (covered >= MIN_COPY and 2 * covered >= len(tokens)):
            if entry is not None and held == covered:
                self._touch(entry)
            return
        candidates = [e for e in self.entries if e is not exclude]
        if not candidates:
            return
        if entry is not None and entry is not exclude and held >= MIN_COPY:
            victim = entry  # the same family of prompts: one entry for it
        else:
            victim = min(candidates, key=lambda e: (bool(e.tokens), e.hits > 0, e.used))
        copy_stream(self.memory, seq, victim.seq)
        victim.tokens, victim.hits = list(tokens), 0
        self.saves += 1
        self._touch(victim)

    def clear(self) -> None:
        """Forget every entry (their cells are gone, e.g. after a failed decode)."""
        for entry in self.entries:
            llama_cpp.llama_memory_seq_rm(self.memory, entry.seq, 0, -1)
            entry.tokens, entry.hits = [], 0

    def _touch(self, entry: Entry) -> None:
        self._clock += 1
        entry.used = self._clock
