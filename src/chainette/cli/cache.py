"""``chainette cache info`` / ``chainette cache clear``: the request ledger from the command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._errors import ChainetteError
from ..ledger.store import Ledger, default_ledger_path

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
    if not target.is_file():
        Console(stderr=True).print(f"No ledger at {escape(str(target))} (nothing cached yet).")
        raise typer.Exit(0)
    try:
        return Ledger(target)
    except ChainetteError as exc:
        Console(stderr=True).print(f"[bold red]Error:[/] [red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(1) from None


@cache_app.command()
def info(ledger: Path | None = LedgerOpt) -> None:
    """Where the ledger is, its size, and what it holds per step.

    [dim]Example:[/]  chainette cache info --ledger .chainette/ledger.sqlite
    """
    with _open(ledger) as store:
        facts = store.info()
    out = Console(highlight=False)
    out.print(
        f"Ledger {escape(str(facts.path))}: {facts.bytes / 1e6:,.2f} MB, "
        f"{facts.completions:,} completed requests, {facts.failures:,} remembered failures",
        soft_wrap=True,
    )
    if facts.by_step:
        table = Table(title_justify="left")
        for column in ("step", "requests", "prompt tokens", "completion tokens"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for step, row in facts.by_step.items():
            table.add_row(
                escape(step),
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
    with _open(ledger) as store:
        if not yes and not typer.confirm(f"Delete every cached request in {store.path}?", default=False):
            raise typer.Exit(1)
        count = store.clear()
    Console(stderr=True, highlight=False).print(
        f"Cleared {count:,} cached requests from {escape(str(store.path))}."
    )
