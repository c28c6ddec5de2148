"""``chainette report RUN [--compare OTHER] -o report.html``: a run folder as one HTML file.

The page is self-contained (no network, no script): see :mod:`chainette.experiments.report`.
Prints the written file as the last stdout line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..experiments.report import write_report
from ._common import exit_on_errors, shown, stderr_console

__all__ = ["report"]


def report(
    run: Path = typer.Argument(..., help="The run folder (what chainette run or experiment run wrote)."),
    compare: Path | None = typer.Option(
        None, "--compare", help="Another run folder to compare with (deltas are this run − that one)."
    ),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="The HTML file to write."),
    samples: int = typer.Option(5, "--samples", min=0, max=100, help="Rows shown of each step's outputs."),
    failures: int = typer.Option(200, "--failures", min=0, help="Failures shown at most."),
) -> None:
    """Write a self-contained HTML report of a run: counts, graph, per-node figures, failures,
    samples, an experiment's cases, and with [bold]--compare[/] the changes from another run.

    [dim]Example:[/]  chainette report runs/calc --compare runs/calc-old -o report.html
    """
    err = stderr_console()
    notes: list[str] = []
    with exit_on_errors(err):
        written = write_report(run, output, compare, samples=samples, failures=failures, notes=notes)
    for note in notes:
        err.print(f"[yellow]![/] {shown(note)}", soft_wrap=True)
    err.print(f"Report of {shown(str(run))} written.", soft_wrap=True)
    typer.echo(str(written))
