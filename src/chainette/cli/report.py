"""``chainette report RUN [--compare OTHER ...] [--group-by KEY] -o report.html``: a run folder as
one HTML file.

The page is self-contained (no network; one inline script sorts and filters): see
:mod:`chainette.experiments.report`. ``--compare`` takes one run folder or several
(``--compare B C`` or ``--compare B --compare C``). Prints the written file as the last stdout line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..experiments.report import write_report
from ._common import exit_on_errors, shown, stderr_console

__all__ = ["report"]


def report(
    run: Path = typer.Argument(..., help="The run folder (what chainette run or experiment run wrote)."),
    more: list[Path] | None = typer.Argument(
        None,
        metavar="MORE",
        help="More run folders to compare with, after --compare (--compare B C).",
        show_default=False,
    ),
    compare: list[Path] | None = typer.Option(
        None,
        "--compare",
        help="Other run folders to compare with, side by side (deltas are this run − each one). "
        "Repeat it, or list them after it: --compare B C.",
        show_default=False,
    ),
    group_by: str | None = typer.Option(
        None,
        "--group-by",
        help="A case metadata key: the cases grouped by its value, with each group's pass rate and score.",
        show_default=False,
    ),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="The HTML file to write."),
    samples: int = typer.Option(5, "--samples", min=0, max=100, help="Rows shown of each step's outputs."),
    failures: int = typer.Option(200, "--failures", min=0, help="Failures shown at most."),
) -> None:
    """Write a self-contained HTML report of a run: config, counts, graph, per-node figures, an
    experiment's cases (sortable, filterable), failures and samples; with [bold]--compare[/] the
    runs side by side, and what differs between them.

    [dim]Example:[/]  chainette report runs/calc --compare runs/calc-old runs/calc-big -o report.html
    """
    err = stderr_console()
    notes: list[str] = []
    if more and not compare:
        err.print(
            f"[red]✗[/] {shown(' '.join(str(m) for m in more))}: one run folder is reported; put "
            "--compare before the others to compare with them (chainette report A --compare B C).",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    others = [*(compare or []), *(more or [])]
    with exit_on_errors(err):
        written = write_report(
            run, output, others, samples=samples, failures=failures, notes=notes, group_by=group_by
        )
    for note in notes:
        err.print(f"[yellow]![/] {shown(note)}", soft_wrap=True)
    err.print(f"Report of {shown(str(run))} written.", soft_wrap=True)
    typer.echo(str(written))
