"""``chainette cache info`` / ``chainette cache clear``: the request ledger from the command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .._errors import LedgerError
from ..ledger.store import Ledger, default_ledger_path
from ._common import check_file, exit_on_errors, shown, stderr_console, visible

__all__ = ["cache_app"]

cache_app = typer.Typer(
    help="The request ledger: the SQLite cache that makes duplicate prompts and reruns free.",
    no_args_is_help=True,
)

LedgerOpt = typer.Option(
    None, "--ledger", help="Ledger file [dim]\\[default: $CHAINETTE_LEDGER or .chainette/ledger.sqlite][/]."
)


def _open(path: Path | None) -> Ledger:
    target = path or default_ledger_path()
    if not target.exists():
        stderr_console().print(f"No ledger at {shown(str(target))} (nothing cached yet).")
        raise typer.Exit(0)
    with exit_on_errors(stderr_console()):
        check_file(target, "The ledger", LedgerError)  # a FIFO or device would block SQLite
        store = Ledger(target)
    return store


@cache_app.command()
def info(ledger: Path | None = LedgerOpt) -> None:
    """Where the ledger is, its size, and what it holds per step.

    [dim]Example:[/]  chainette cache info --ledger .chainette/ledger.sqlite
    """
    with _open(ledger) as store, exit_on_errors(stderr_console()):
        facts = store.info()
    out = Console(highlight=False)
    out.print(
        f"Ledger {shown(str(facts.path))}: {facts.bytes / 1e6:,.2f} MB, "
        f"{facts.completions:,} completed requests, {facts.failures:,} remembered failures",
        soft_wrap=True,
    )
    if facts.by_step:
        table = Table(title_justify="left")
        for column in ("step", "requests", "prompt tokens", "completion tokens"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for step, row in facts.by_step.items():
            table.add_row(
                shown(step),
                f"{row['completions']:,}",
                f"{row['prompt_tokens']:,}",
                f"{row['completion_tokens']:,}",
            )
        out.print(table)


@cache_app.command()
def clear(
    ledger: Path | None = LedgerOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete everything the ledger holds (the next run sends every request again).

    [dim]Example:[/]  chainette cache clear --yes
    """
    with _open(ledger) as store, exit_on_errors(stderr_console()):
        if not yes and not typer.confirm(
            f"Delete every cached request in {visible(str(store.path))}?", default=False
        ):
            raise typer.Exit(1)
        count = store.clear()
    Console(stderr=True, highlight=False).print(
        f"Cleared {count:,} cached requests from {shown(str(store.path))}."
    )
