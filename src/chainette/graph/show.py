"""``Show``: a node that prints chosen fields of the records it sees, for a quick look while a
chain runs (BatchFactory's ``Print()``), and passes them on unchanged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ChainDefinitionError
from .contract import Checker, Node, Scope
from .fields import check_fields, field_map
from .ids import check_id

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["Show"]


class Show(Node):
    """Print chosen fields of every ``every``-th record that reaches it, at most ``limit`` records.

    Each record is one line, ``[<id>] <record id> field=value ...`` (values cut at ``width``
    characters). Under the CLI's live progress display the lines are printed above it (on its
    console, stderr); otherwise on stdout. The record goes on unchanged. ``fields`` are checked
    against the model that reaches the node before any request is sent.

    Example:
        >>> from chainette import Show
        >>> Show(fields=["answer"], limit=5).limit
        5
    """

    kind = "show"
    passes_through = True

    def __init__(
        self,
        fields: Sequence[str] | Mapping[str, str] | None = None,
        *,
        every: int = 1,
        limit: int | None = None,
        width: int = 200,
        id: str | None = None,
        name: str | None = None,
    ) -> None:
        for label, number, least in (("every", every, 1), ("limit", limit, 0), ("width", width, 10)):
            if number is not None and (
                not isinstance(number, int) or isinstance(number, bool) or number < least
            ):
                raise ChainDefinitionError(f"Show: {label} must be an integer >= {least}, got {number!r}.")
        self.fields = field_map(fields, "Show")
        self.every = every
        self.limit = limit
        self.width = width
        self.id = check_id(id or "show", self.kind)
        self.name = name or self.id
        self.input_model = None
        self.output_model = None

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        check_fields(checker, self, self.fields, current)
        return current

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fields": self.fields, "every": self.every, "limit": self.limit}
