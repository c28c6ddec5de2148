"""Chosen fields of a record's value, for the nodes that write or show them (``Sink``, ``Show``):
the names normalised, checked against the model that reaches the node (before any request),
and picked from each value at run time."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .._errors import ChainDefinitionError

if TYPE_CHECKING:
    from .contract import Checker, Node

__all__ = ["check_fields", "field_map", "pick"]


def field_map(fields: Sequence[str] | Mapping[str, str] | None, where: str) -> dict[str, str] | None:
    """``["a", "b"]`` or ``{"column": "field"}`` as ``{column: field}`` (None: every field)."""
    if fields is None:
        return None
    if isinstance(fields, str):
        raise ChainDefinitionError(
            f"{where}: fields takes a list of field names, like [{fields!r}], not a string."
        )
    pairs = list(fields.items()) if isinstance(fields, Mapping) else [(f, f) for f in fields]
    if not pairs or not all(isinstance(c, str) and isinstance(f, str) and c and f for c, f in pairs):
        raise ChainDefinitionError(
            f"{where}: fields must name at least one field: a list of names (['answer']) or "
            f"{{column: field}} ({{'reply': 'answer'}}); got {fields!r}."
        )
    return dict(pairs)


def check_fields(
    checker: Checker, node: Node, fields: dict[str, str] | None, current: type[BaseModel] | None
) -> None:
    """An error for each chosen field the model reaching ``node`` lacks (with a did-you-mean)."""
    if fields is None or current is None:
        return
    have = list(current.model_fields)
    for field in fields.values():
        if field not in current.model_fields:
            close = difflib.get_close_matches(field, have, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            checker.add(
                "error",
                node,
                f"{node.kind} {node.id!r}: field {field!r} is not a field of {current.__name__}, the value "
                f"that reaches it{hint}; its fields: {', '.join(map(repr, have))}.",
            )


def pick(value: Any, fields: dict[str, str]) -> dict[str, Any]:
    """``{column: value's field}``; raises ``KeyError(field)`` for a field the value lacks."""
    if isinstance(value, BaseModel):
        data = value.__dict__
        extra = value.__pydantic_extra__ or {}
        return {c: data[f] if f in data else extra[f] for c, f in fields.items()}
    if isinstance(value, Mapping):
        return {c: value[f] for c, f in fields.items()}
    raise KeyError(next(iter(fields.values())))
