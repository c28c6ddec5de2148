"""How many tokens of each sequence go into one decode, so that no token's rounding depends on the batch.

Each running sequence has tokens waiting for the cache: its next generated token (one), the
next chunk of its prompt, or a run of tokens its grammar forced (fast-forward). llama.cpp cuts
a decode into passes (``split_equal(sequential=True)`` with one cache stream per sequence):
each pass takes the lowest sequence that has tokens left and the consecutive ids after it, and
as many tokens from each of them as the one with the fewest left has. Two shapes of pass are
computed with other rounding than every other, so an answer would depend on what was decoded
alongside it:

- 64 or more query tokens of one sequence (a tiled flash-attention kernel): at most
  :data:`PROMPT_CHUNK` tokens of a sequence per decode;
- one token of one sequence and nothing else, once that sequence holds more than
  :data:`SPLIT_KV_CELLS` cells (the split-KV path). A whole decode of one token gets a
  throw-away second token (:meth:`.llama_batch.BatchDecoder._step`); for the passes inside a
  larger decode, :func:`plan` takes one token less from a sequence that would end alone on one
  token, until no pass does.
"""

from __future__ import annotations

__all__ = ["PROMPT_CHUNK", "SPLIT_KV_CELLS", "lone_pass", "plan"]

PROMPT_CHUNK = 63
"""Most tokens of one sequence per decode. llama.cpp's CPU flash attention switches to a tiled
kernel, with other rounding, for 64 (``GGML_FA_TILE_Q``) or more query tokens of one sequence in
a batch; below that every token is computed the same way however its prompt (or a forced run) is
split, so an answer does not depend on what was cached or decoded alongside it."""

SPLIT_KV_CELLS = 256
"""Cells above which llama.cpp's CPU flash attention takes another path, with other rounding
(it splits the cache over threads, ``use_split_kv_path``), for a pass that holds one token of
one sequence and nothing else: the whole pass is that token once its sequence holds more than
this many cells (``n_kv`` is padded to 256, the path starts at 512). Such a decode gets a
second, throw-away token of the same sequence (:meth:`.llama_batch.BatchDecoder._step`), so
that a lone sequence is computed as it is beside others."""


def plan(
    seqs: list[int], waiting: list[int], budget: int, forced: tuple[int, ...] | list[int] = ()
) -> list[int]:
    """Tokens to decode now for each sequence (``seqs``: ids, increasing; ``waiting``: tokens each has left, >= 1).

    A sequence with one token left gets it; the others share what ``budget`` leaves, at most
    :data:`PROMPT_CHUNK` each, then lose one token at a time where a pass would hold one token
    of one sequence alone.

    ``forced``: indexes whose waiting tokens are a forced run (not a prompt). Each run of
    consecutive sequences with tokens left after the first pass is one more pass over the
    weights, which costs about a lone token's decode (measured: at parallel 64 scattered forced
    runs made each decode twice as long). So forced runs go in whole only while they add at
    most one pass to the decode; the others go one token per decode (no logits until the last),
    beside the tokens the other sequences decode anyway.

    Example:
        >>> plan([0, 1], [3, 2], 2048)  # 2 + 2 tokens, then the 3rd of sequence 0 alone: no
        [2, 2]
        >>> plan([0, 1, 2], [1, 5, 40], 2048)
        [1, 5, 40]
    """
    multi = sum(1 for n in waiting if n > 1)
    share = max(1, (budget - (len(waiting) - multi)) // multi) if multi else 1
    full = [n if n == 1 else min(n, PROMPT_CHUNK, share) for n in waiting]
    counts = list(full)
    if forced and len(seqs) > 1:
        for i in forced:
            counts[i] = 1
        allowed = passes(seqs, counts) + 1
        for i in forced:
            counts[i] = full[i]
            if passes(seqs, counts) > allowed:
                counts[i] = 1
    while True:
        alone = lone_pass(seqs, counts)
        if alone is None or counts[alone] <= 1:
            return counts
        counts[alone] -= 1


def passes(seqs: list[int], counts: list[int]) -> int:
    """How many passes llama.cpp cuts a decode of ``counts`` tokens per sequence into."""
    return len(_passes(seqs, counts))


def lone_pass(seqs: list[int], counts: list[int]) -> int | None:
    """Index of a sequence that llama.cpp would decode as one token alone in a pass of a larger
    decode (None: none would). A decode of one token in all is not counted (it gets a throw-away
    token instead)."""
    if sum(counts) <= 1:
        return None
    for run, take in _passes(seqs, counts):
        if len(run) == 1 and take == 1:
            return run[0]
    return None


def _passes(seqs: list[int], counts: list[int]) -> list[tuple[list[int], int]]:
    """llama.cpp's passes (``split_equal``, sequential): the indexes in each and the tokens each gives."""
    out: list[tuple[list[int], int]] = []
    left = list(counts)
    while True:
        live = [i for i, n in enumerate(left) if n > 0]
        if not live:
            return out
        run = [live[0]]
        for i in live[1:]:
            if seqs[i] != seqs[run[-1]] + 1:
                break
            run.append(i)
        take = min(left[i] for i in run)
        out.append((run, take))
        for i in run:
            left[i] -= take
