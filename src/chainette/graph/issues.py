"""What the static checks find: :class:`Issue` and the :class:`CheckReport` that holds them.

Imports nothing of the graph: the checker (``graph.contract``) fills a report, the chain returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .._errors import ChainDefinitionError

__all__ = ["CheckReport", "Issue"]


@dataclass(frozen=True)
class Issue:
    """One finding of the checker."""

    level: Literal["error", "warning"]
    node_id: str
    message: str
    error_type: type[ChainDefinitionError] = ChainDefinitionError


@dataclass
class CheckReport:
    """Everything the checker found. ``raise_for_errors()`` turns errors into one exception."""

    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise the first error's type with every error listed in the message."""
        errors = self.errors
        if not errors:
            return
        if len(errors) == 1:
            raise errors[0].error_type(errors[0].message)
        listing = "\n".join(f"  - {e.message}" for e in errors)
        kinds = {e.error_type for e in errors}
        cls = kinds.pop() if len(kinds) == 1 else ChainDefinitionError
        raise cls(f"The chain has {len(errors)} problems:\n{listing}")
