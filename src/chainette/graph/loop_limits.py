"""A loop's per-record limits: ``max_hops``, ``max_tokens`` or ``deadline_s`` read from each
record (PenguiFlow keeps budgets on the message) instead of one number for every record.

A limit given as a string names a field of the record entering the loop; one given as a
function is called with the value (or the value and a :class:`~chainette.RecordView`). Either is
read once per record, when it enters the loop. ``None`` from the record means no such limit for
it; anything else that is not a number the limit accepts fails that record, naming its id, the
loop, the limit and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .hints import wants_record
from .view import RecordView

__all__ = ["RecordLimit", "limit_problem"]


def limit_problem(label: str, value: object) -> str | None:
    """Why ``value`` cannot be loop limit ``label`` (None: it can)."""
    if label == "deadline_s":
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        )
        return None if ok else f"must be a number > 0 (seconds), got {value!r}"
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else f"must be an integer >= 1, got {value!r}"


class RecordLimit:
    """One limit of a loop read from each record: a field of it, or a function of it.

    Example:
        >>> limit = RecordLimit("think", "max_hops", "hops")
        >>> limit.field, limit.describe()
        ('hops', 'field hops')
    """

    __slots__ = ("field", "fn", "label", "loop_id", "wants_record")

    def __init__(self, loop_id: str, label: str, source: str | Callable[..., Any]) -> None:
        self.loop_id = loop_id
        self.label = label
        self.field: str | None = source if isinstance(source, str) else None
        self.fn: Callable[..., Any] | None = None if isinstance(source, str) else source
        self.wants_record = self.fn is not None and wants_record(self.fn)

    def describe(self) -> str:
        """``field hops`` or ``fn budget_of``: what ``graph.json`` and summaries say."""
        if self.field is not None:
            return f"field {self.field}"
        return f"fn {getattr(self.fn, '__name__', 'function')}"

    def missing_field(self, model: type[BaseModel] | None) -> str | None:
        """The check before any request: the message when the named field is not in ``model``
        (the model entering the loop; None: unknown, left to run time)."""
        if self.field is None or model is None or self.field in model.model_fields:
            return None
        fields = ", ".join(model.model_fields) or "none"
        return (
            f"Loop {self.loop_id!r}: {self.label}={self.field!r} reads that field of each record, but "
            f"{model.__name__} (what enters the loop) has no field {self.field!r} (it has: {fields}). "
            f"Name one of its fields, or give {self.label} a number or a function of the record."
        )

    def read(self, value: Any, view: RecordView) -> Any:
        """This record's limit (None: none), or raise :class:`LookupError` / :class:`ValueError`
        with the reason (the caller fails the record with it); what the function raises propagates."""
        if self.fn is not None:
            found = self.fn(value, view) if self.wants_record else self.fn(value)
            where = f"{self.describe()} returned"
        else:
            name = self.field or ""
            where = f"its field {name!r} is"
            if isinstance(value, BaseModel):
                extra = value.__pydantic_extra__ or {}
                if name not in type(value).model_fields and name not in extra:
                    raise LookupError(f"it has no field {name!r}")
                found = getattr(value, name, None) if name in type(value).model_fields else extra[name]
            elif isinstance(value, dict):
                if name not in value:
                    raise LookupError(f"it has no field {name!r}")
                found = value[name]
            else:
                raise LookupError(f"its value ({type(value).__name__}) has no fields to read {name!r} from")
        if found is None:
            return None
        problem = limit_problem(self.label, found)
        if problem is not None:
            raise ValueError(f"{where} {found!r}; {self.label} {problem.split(',')[0]}")
        return found
