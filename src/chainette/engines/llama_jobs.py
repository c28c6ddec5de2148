"""A request inside the batch decoder (:class:`Job`), its sequence slot, and the text a job's tokens make.

Split from :mod:`.llama_batch`, which owns the loop: everything here runs on the loop thread and
touches no llama.cpp state. Imported only when the ``llama_cpp`` back-end starts.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

import anyio

from .base import ChatRequest, Completion
from .llama_guidance import TokenChooser
from .thread_feed import Feed

__all__ = ["Job", "Slot", "common_prefix", "completion_of", "cut_at_stop", "stream_piece"]


@dataclass(eq=False)
class Job:
    """One request on its way through the decoder. Written by the loop thread, read after ``done``."""

    request: ChatRequest
    token: Any  # the submitting event loop (anyio EventLoopToken)
    done: anyio.Event = field(default_factory=anyio.Event)
    cancelled: bool = False
    completion: Completion | None = None
    feed: Feed[str | Completion] | None = None
    """Where a streamed job's deltas and completion go (None: only ``done`` is set)."""
    # loop-thread state
    prompt: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    """The prompt, then the answer's tokens: what the sequence's cache will hold, in order."""
    stops: tuple[str, ...] = ()
    max_new: int = 0
    chooser: TokenChooser | None = None
    out: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    utf8: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))
    held: str = ""
    """Decoded text not streamed yet: it may be the start of a stop string."""
    streamed: int = 0
    """Characters streamed so far."""


@dataclass(eq=False)
class Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)
    """Tokens whose KV cells this sequence holds, in order."""
    job: Job | None = None
    fed: int = 0
    """How many of ``job.seq`` (prompt, then answer) are in the cache."""
    row: int = -1
    """Row of this sequence's logits in the last decoded batch (-1: none)."""


def stream_piece(job: Job, piece: bytes) -> None:
    """Hand on the text ``piece`` completes, except a tail that may begin a stop string."""
    assert job.feed is not None
    job.held += job.utf8.decode(piece)
    ready = len(job.held) - _stop_start(job.held, job.stops)
    if ready > 0:
        job.feed.put(job.held[:ready])
        job.held = job.held[ready:]
        job.streamed += ready


def cut_at_stop(job: Job) -> bool:
    tail = bytes(job.text[-256:]).decode("utf-8", errors="ignore")
    for stop in job.stops:
        if stop and stop in tail:
            text = bytes(job.text).decode("utf-8", errors="ignore")
            job.text = bytearray(text[: text.index(stop)].encode("utf-8"))
            return True
    return False


def completion_of(job: Job, finish_reason: str) -> Completion:
    return Completion(
        text=bytes(job.text).decode("utf-8", errors="ignore"),
        finish_reason=finish_reason,
        prompt_tokens=len(job.prompt),
        completion_tokens=len(job.out),
    )


def _stop_start(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that a stop string starts with (0: none)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
