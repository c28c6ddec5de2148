"""How ``--help`` looks: typer's rich panels, with two fixes made once for every command.

- A boolean flag (``--overwrite``, ``--ordered/--as-finished``) takes no value, so no type is
  shown beside it (typer shows ``<bool>``, read as "takes a value").
- Option names are never cut: in typer's options table every column may be shrunk with an
  ellipsis when the terminal is narrow (80 columns, or piped), so ``--record-token-budget``
  became ``--record-token-budg…``. Here the names, short names and negative names keep their
  full width; the type and help columns share what is left, wrapping their text (a long word is
  folded, never cut).

Both are narrow overrides of typer's rendering (``TyperOption.display_type_rich`` and the table
class its options panel builds), installed by :func:`install` when the app is imported; the
tests in ``tests/cli/test_cli_help.py`` render every command's help at 80 columns and fail if
a name is cut, so a typer upgrade that changes these internals is caught.
"""

from __future__ import annotations

from typing import Any

import typer.core
import typer.rich_utils
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

__all__ = ["install"]

_installed = False


class _OptionsTable(Table):
    """typer's options table with the name columns kept whole (see the module docstring)."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.highlight and not self.show_header and len(self.columns) >= 3:  # an options panel
            *names, types, help_column = self.columns
            for column in names:
                column.no_wrap = True
                column.overflow = "ignore"
            types.ratio, types.overflow = 1, "fold"
            help_column.ratio, help_column.overflow = 3, "fold"
            help_column._cells = [_one_text(cell) for cell in help_column._cells]
        yield from super().__rich_console__(console, options)


def _one_text(cell: Any) -> Any:
    """typer puts an option's help and its ``[default: ...]`` side by side in a ``Columns``, which
    cuts a long word with an ellipsis: the same texts as one wrapped ``Text`` instead."""
    if isinstance(cell, Columns) and all(isinstance(item, Text) for item in cell.renderables):
        joined = Text(" ").join(item for item in cell.renderables if isinstance(item, Text))
        joined.overflow = "fold"
        return joined
    return cell


def _display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
    if getattr(self, "is_flag", False) and not getattr(self, "count", False):
        return None  # a flag takes no value
    return _original_display_type_rich(self, ctx)


_original_display_type_rich = typer.core.TyperOption.display_type_rich


def install() -> None:
    """Apply the fixes (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    typer.core.TyperOption.display_type_rich = _display_type_rich  # type: ignore[method-assign]
    setattr(typer.rich_utils, "Table", _OptionsTable)  # noqa: B010 - not a re-export typer declares
