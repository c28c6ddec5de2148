"""Whole-stream operations (BatchFactory's): ``take`` the first n records, ``shuffle`` them.

They act on the stream of records, not on one record at a time, so they stand at the top level
of a chain (not inside a branch, route, loop or map, where a chunk of records is all they would
see) and each runs as a stage of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import ChainDefinitionError
from .contract import Checker, Node, Scope
from .ids import check_id

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["Shuffle", "StreamOp", "Take", "shuffle", "take"]


class StreamOp(Node):
    """A node over the whole stream of records; the value of each record goes on unchanged."""

    passes_through = True
    whole_stream = True

    def __init__(self, id: str, name: str | None) -> None:
        self.id = check_id(id, self.kind)
        self.name = name or id
        self.input_model = None
        self.output_model = None

    def defines(self) -> list[str]:
        return []

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        return current


class Take(StreamOp):
    """Pass on the first ``n`` records that reach it; the rest are counted as filtered here.

    At the head of a chain (nothing before it reorders or holds records, e.g. a
    :class:`Shuffle`) it also stops reading the input once ``n`` records have passed, so
    ``take(100)`` over a file of a million lines reads a little more than 100. After stages that
    run chunks concurrently (LLM steps), "first" is the order in which records arrive.

    Example:
        >>> from chainette import take
        >>> take(100).n
        100
    """

    kind = "take"

    def __init__(self, n: int, *, id: str | None = None, name: str | None = None) -> None:
        if not isinstance(n, int) or n < 1:
            raise ChainDefinitionError(f"take: n must be an integer >= 1, got {n!r}.")
        self.n = n
        super().__init__(id or f"take_{n}", name)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n": self.n}


class Shuffle(StreamOp):
    """Shuffle the stream with a seeded shuffle buffer of ``buffer`` records (bounded memory).

    Each record enters the buffer; once it is full, every new record takes the place of a
    randomly chosen one, which goes on. At the end of the input the buffer is emptied in random
    order. With ``buffer`` at least the number of records the shuffle is uniform; with less, a
    record moves at most about ``buffer`` places ahead. The same seed and input give the same
    order.

    Example:
        >>> from chainette import shuffle
        >>> s = shuffle(seed=7, buffer=1000)
        >>> (s.seed, s.buffer)
        (7, 1000)
    """

    kind = "shuffle"

    def __init__(
        self, *, seed: int = 0, buffer: int = 10_000, id: str | None = None, name: str | None = None
    ) -> None:
        if buffer < 1:
            raise ChainDefinitionError(f"shuffle: buffer must be >= 1, got {buffer!r}.")
        self.seed = seed
        self.buffer = buffer
        super().__init__(id or "shuffle", name)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed, "buffer": self.buffer}


def take(n: int, *, id: str | None = None) -> Take:
    """The first ``n`` records of the stream (see :class:`Take`)."""
    return Take(n, id=id)


def shuffle(*, seed: int = 0, buffer: int = 10_000, id: str | None = None) -> Shuffle:
    """The stream in a seeded random order, in bounded memory (see :class:`Shuffle`)."""
    return Shuffle(seed=seed, buffer=buffer, id=id)
