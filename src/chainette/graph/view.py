"""``RecordView``: what a Python node can read of a record besides its current value.

``apply`` functions that take a second parameter receive one: the record's id and input
position, the chain's input, and every earlier output by node id or joined alias, read-only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["RecordView"]


class RecordView(Mapping[str, Any]):
    """A read-only view of one record's context, for ``def f(value, record: RecordView)``.

    ``record["qa"]`` is step ``qa``'s output (a model instance), ``record["fr"]`` a joined
    branch's, ``record.input`` the chain's input record; ``"qa" in record``, ``record.get("qa")``
    and iteration work as on a dict. Inside a loop's body ``record["<loop id>"]`` is the
    record's :class:`~chainette.LoopState` (``.iteration``: the pass); inside a map's body the
    record is a child: :attr:`parent` and :attr:`item` say whose and which, and the parent's
    earlier outputs are there by id as before the map. Inside a subflow the names are the
    subflow chain's own (``record.input`` is the value that entered the subflow).

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import RecordView, apply
        >>> class Score(BaseModel):
        ...     correct: bool
        >>> def assess(extracted: BaseModel, record: RecordView) -> Score:
        ...     return Score(correct=extracted.answer == record.input.expected)
        >>> apply(assess).wants_record
        True
    """

    __slots__ = ("_history", "id", "index")

    def __init__(self, id: str, index: int, history: Mapping[str, Any]) -> None:
        self.id = id
        """The record's id (stable across runs; fan-out children are ``<parent>.<k>``)."""
        self.index = index
        """0-based position of the input record it came from."""
        self._history = history

    @property
    def parent(self) -> str | None:
        """Inside a map's body: the id of the record whose list item this child is (the part of
        :attr:`id` before the last ``/``); None outside a map."""
        return self.id.rsplit("/", 1)[0] if "/" in self.id else None

    @property
    def item(self) -> int | None:
        """Inside a map's body: the 0-based position of this child's item in its parent's list;
        None outside a map."""
        if "/" not in self.id:
            return None
        return int(self.id.rsplit("/", 1)[1].split(".", 1)[0])

    @property
    def input(self) -> Any:
        """The chain's input record (the model the first node declared, or a dict)."""
        return self._history.get("input")

    def __getitem__(self, key: str) -> Any:
        try:
            return self._history[key]
        except KeyError:
            known = ", ".join(self._history) or "none"
            raise KeyError(
                f"{key!r}: no earlier output of this record has that name (it has: {known})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._history)

    def __len__(self) -> int:
        return len(self._history)

    def __repr__(self) -> str:
        return f"RecordView(id={self.id!r}, outputs={list(self._history)})"
