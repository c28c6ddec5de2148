"""Which columns of a table feed which fields of the chain's input model, checked before a run.

A field reads the column of its own name (its alias, when it has one), or the column that
``columns={field: column}`` names. Checked when the input is opened, against the file's (or the
dataset's) column names: a mapped field the model does not have, a mapped column the file does
not have, or a required field without a column is an :class:`InputError` naming the file, with
a did-you-mean and the columns there are. Only the columns the model reads are read (a wide
table, an image column, cost nothing), unless the model keeps extra fields (``extra="allow"``)
or there is no model.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .._errors import InputError

__all__ = ["ColumnMap", "resolve_columns"]


@dataclass(frozen=True)
class ColumnMap:
    """What to read from a table and under which keys the record's value gets it."""

    read: list[str] | None = None
    """The columns to read, in the table's order (None: all of them)."""
    rename: dict[str, str] = field(default_factory=dict)
    """``{column: key}`` for the columns that go in under another name."""

    def value(self, row: dict[str, Any]) -> dict[str, Any]:
        """A table row as the record's value."""
        if not self.rename:
            return row
        return {self.rename.get(key, key): v for key, v in row.items()}


def _hint(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1) or [
        n for n in names if n.lower() == name.lower()
    ]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shown(names: Sequence[str], limit: int = 12) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def resolve_columns(
    where: str,
    available: Sequence[str] | None,
    model: type[BaseModel] | None,
    columns: Mapping[str, str] | None,
) -> ColumnMap:
    """The :class:`ColumnMap` for a table named ``where`` (``data.parquet``) with ``available``
    columns (None: not known before reading, as for some streamed datasets: nothing is checked).

    Raises:
        InputError: A mapped field or column that does not exist, or a required field with no column.
    """
    columns = dict(columns or {})
    keys: dict[str, str] = {}  # field name -> the key pydantic reads it by
    required: list[str] = []
    if model is not None:
        for name, info in model.model_fields.items():
            keys[name] = info.alias if isinstance(info.alias, str) else name
            if info.is_required():
                required.append(name)
        by_key = {key: name for name, key in keys.items()}
        for target in columns:
            if target not in keys and target not in by_key:
                raise InputError(
                    f"columns maps {target!r}, which is not a field of {model.__name__}"
                    f"{_hint(target, list(keys))}; its fields: {_shown(list(keys))}."
                )
    if available is None:
        return ColumnMap(None, {c: keys.get(f, f) for f, c in columns.items() if keys.get(f, f) != c})
    names = list(available)
    present = set(names)
    for target, column in columns.items():
        if column not in present:
            raise InputError(
                f"{where} has no column {column!r} (mapped to {target!r}){_hint(column, names)}. "
                f"Its columns: {_shown(names)}."
            )
    source = {keys.get(f, f): c for f, c in columns.items()}  # key -> column
    for name in required:
        key = keys[name]
        column = source.get(key, key)
        if column not in present:
            raise InputError(
                f"{where} has no column {column!r} for the required field {name!r} of "
                f"{model.__name__ if model else 'the input model'}{_hint(column, names)}. Its columns: "
                f"{_shown(names)}. Name the column that holds it: columns={{{name!r}: '<column>'}} "
                f"(CLI: --column {name}=<column>)."
            )
    rename = {column: key for key, column in source.items() if column != key}
    if model is None or model.model_config.get("extra") == "allow":
        return ColumnMap(None, rename)
    wanted = {source.get(key, key) for key in keys.values()}
    return ColumnMap([n for n in names if n in wanted], rename)
