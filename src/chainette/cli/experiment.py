"""``chainette experiment run path.py:experiment [-c key=value ...] [-o DIR]`` and
``chainette experiment config path.py:experiment`` (the keys ``-c`` can set).

``run`` shows the live progress of the chain's run on stderr (or ``--json-logs``: one JSON line
per event), then prints a table of the cases (id, status, score, reason cut short) and the pass
rate, then the run folder as the last stdout line, as ``run`` does; the run's summary goes to stderr.
Like ``run``, it exits with status 3 (``EXIT_ALL_FAILED``) when every case errored, so nothing was
assessed (``chainette runs rerun`` too: :func:`exit_if_every_case_errored`).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import typer
from rich.console import Console
from rich.table import Table

from ..engines.registry import load_engines
from ..experiments import Experiment, ExperimentResult, describe_config, load_suite
from ..runtime.events import Middleware
from ._common import EXIT_ALL_FAILED, checked_engines, exit_on_errors, shown, stderr_console, visible
from .loading import load_object, split_target
from .progress import JsonEventLog, ProgressDisplay, print_run_summary

__all__ = [
    "STATUS_STYLE",
    "exit_if_every_case_errored",
    "experiment_app",
    "load_experiment",
    "print_result",
    "resolved_target",
]

experiment_app = typer.Typer(
    help="Run an experiment: a chain over a suite of cases, each case assessed.", no_args_is_help=True
)

STATUS_STYLE = {"pass": "green", "fail": "red", "error": "magenta", "unscored": "dim"}
_REASON = 70


def load_experiment(target: str) -> Experiment:
    """The :class:`Experiment` named by ``path.py:name`` (or the only one the module defines)."""
    forms = "path/to/file.py:experiment_variable or package.module:experiment_variable"
    return load_object(target, Experiment, "Experiment", forms, default_name="experiment")


def resolved_target(target: str) -> str:
    """``target`` with a ``.py`` file made absolute, so a rerun finds it from any folder."""
    source, attr = split_target(target)
    if source.endswith(".py") or Path(source).is_file():
        source = str(Path(source).resolve())
    return f"{source}:{attr}" if attr else source


@experiment_app.command("run")
def run_experiment(
    target: str = typer.Argument(..., help="The experiment: [bold]path/to/file.py:experiment[/]."),
    config: list[str] = typer.Option(
        [], "--config", "-c", help="A config override key=value (dotted keys; repeatable)."
    ),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run folder to write."),
    engines: Path | None = typer.Option(None, "--engines", "-e", help="engines.yml to register."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    ledger: Path | None = typer.Option(None, "--ledger", help="Request ledger (SQLite)."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress, no run summary; the cases table and pass rate only."
    ),
    json_logs: bool = typer.Option(
        False, "--json-logs", help="One JSON line per run event on stderr, no live display."
    ),
) -> None:
    """Run an experiment and print each case's status, score and reason, then the pass rate.

    Progress of the chain's run is shown on stderr as for [bold]chainette run[/] (later turns and
    judges run without it); the run folder is printed on stdout as the [bold]last line[/].

    [dim]Example:[/]  chainette experiment run experiments.py:calc -c engine=local -o runs/calc
    """
    err = stderr_console()
    display: ProgressDisplay | None = None
    with exit_on_errors(err):
        experiment = load_experiment(target)
        if engines is not None:
            load_engines(checked_engines(engines))
        middleware: list[Middleware] = []
        if json_logs:
            middleware.append(JsonEventLog())
        elif not quiet:
            display = ProgressDisplay(total=len(load_suite(experiment.suite)), console=err, summary=False)
            middleware.append(display)

        async def main() -> ExperimentResult:
            return await experiment.arun(
                output_dir,
                config,
                target=resolved_target(target),
                engines=engines,
                overwrite=overwrite,
                ledger=ledger,
                middleware=middleware,
            )

        try:
            result = anyio.run(main)
        finally:
            if display is not None:
                display.stop()
    if json_logs:
        keys = (
            "cases",
            "pass",
            "fail",
            "error",
            "unscored",
            "pass_rate",
            "tokens",
            "cost",
            "cache",
            "duration_s",
        )
        JsonEventLog()("summary", {**{k: result.totals.get(k) for k in keys}, "output_dir": str(result.path)})
    elif not quiet:
        print_run_summary(err, result.run.metadata, result.path)
    print_result(result)
    exit_if_every_case_errored(err, result)


def exit_if_every_case_errored(err: Console, result: ExperimentResult) -> None:
    """Exit with status 3 (as ``chainette run`` does when every record failed) when the experiment
    had cases and every one of them errored (the chain or an assessor failed on it)."""
    cases, errors = result.totals.get("cases", 0), result.totals.get("error", 0)
    if cases and errors == cases:
        err.print(
            f"[bold red]Every case errored[/] ({errors:,}): exit status {EXIT_ALL_FAILED}. The reasons "
            f"are in the table above and in [bold]chainette runs show {shown(str(result.path))}[/].",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_ALL_FAILED)


def print_result(result: ExperimentResult) -> None:
    """The cases table and the pass rate, then the run folder as the last stdout line."""
    out = Console(highlight=False, soft_wrap=True)
    out.print(_table(result))
    t = result.totals
    rate = "n/a" if t["pass_rate"] is None else f"{t['pass_rate']:.1%}"
    out.print(
        f"pass rate {rate}: {t['pass']} passed, {t['fail']} failed, {t['error']} errors, "
        f"{t['unscored']} unscored of {t['cases']}"
    )
    typer.echo(str(result.path))


@experiment_app.command("config")
def list_config(
    target: str = typer.Argument(..., help="The experiment: [bold]path/to/file.py:experiment[/]."),
) -> None:
    """List the config keys -c can set: type, default, whether required (Internal fields are hidden).

    [dim]Example:[/]  chainette experiment config experiments.py:calc
    """
    with exit_on_errors(stderr_console()):
        experiment = load_experiment(target)
    config = experiment.config
    out = Console(highlight=False, soft_wrap=True)
    if config is None:
        out.print(f"Experiment {shown(experiment.name)} has no config.")
        return
    table = Table(title=f"Config of {shown(experiment.name)}", title_justify="left")
    for column in ("key", "type", "default", "help"):
        table.add_column(column, overflow="fold")  # a key is never cut: it is what -c takes
    model = config if isinstance(config, type) else type(config)
    for row in describe_config(model):
        default = "[bold]required[/]" if row["required"] else shown(repr(row["default"]))
        table.add_row(shown(row["path"]), shown(row["type"]), default, shown(row["help"]))
    out.print(table)


def _table(result: ExperimentResult) -> Table:
    table = Table(title=f"Experiment {shown(result.name, lines=False)}", title_justify="left")
    for column in ("case", "status", "score", "reason"):
        table.add_column(column)
    for case in result.cases:
        reason = visible(case.reason, lines=False)  # a judge's reason is a model's text
        reason = reason if len(reason) <= _REASON else reason[: _REASON - 1] + "…"
        score = "" if case.score is None else f"{case.score:g}"
        style = STATUS_STYLE[case.status]
        table.add_row(shown(case.id, lines=False), f"[{style}]{case.status}[/]", score, shown(reason))
    return table
