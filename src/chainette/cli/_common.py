"""What every command shares: the stderr console and how errors end a command.

Exit codes: 1 for a ChainetteError (message only, no traceback), 130 for Ctrl-C. Other
exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from .._errors import ChainetteError
from ..engines.secrets import scrub_text

__all__ = ["exit_on_errors", "stderr_console"]


def stderr_console() -> Console:
    """Where progress, summaries and errors go (stdout is for what a command produces)."""
    return Console(stderr=True, highlight=False)


@contextmanager
def exit_on_errors(err: Console, run_folder: dict[str, Any] | None = None) -> Iterator[None]:
    """ChainetteError → red message and exit 1; Ctrl-C → exit 130. Other errors are bugs: traceback.

    ``run_folder``: filled in by a run as it starts; its ``output_dir`` is named in the message.
    """
    where = ""
    try:
        yield
    except ChainetteError as exc:
        if run_folder and run_folder.get("output_dir"):
            where = (
                f"\nWhat was written before the error is in {run_folder['output_dir']} (see metadata.json)."
            )
        err.print(
            f"[bold red]Error:[/] [red]{escape(scrub_text(str(exc)))}[/]{escape(where)}", soft_wrap=True
        )
        for note in getattr(exc, "__notes__", ()):
            err.print(f"[dim]{escape(scrub_text(note))}[/]", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if run_folder and run_folder.get("output_dir"):
            where = f" Partial results are in {run_folder['output_dir']} (metadata.json status: interrupted)."
        err.print(f"[yellow]Interrupted.[/]{escape(where)}", soft_wrap=True)
        raise typer.Exit(130) from None
