"""``chainette runs list | show | summarize | compare | rerun``: run history (``list``: every run
folder, plain ``chainette run`` ones too; the others: experiment runs).

Reads the run folders' ``experiment.json`` (see :mod:`chainette.experiments.history`); RUN is a
run folder, or a folder name under ``--root``. ``rerun`` imports the experiment again from the
``path.py:name`` that ``chainette experiment run`` recorded, with the same overrides.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import anyio
import typer
from rich.console import Console
from rich.table import Table

from .._errors import ExperimentError
from ..engines.registry import load_engines
from ..experiments import ExperimentResult, load_suite, public_config
from ..experiments.history import RunRecord, compare_runs, flatten_config, load_run, restrict, scan_runs
from ._common import checked_engines, exit_on_errors, json_text, shown, stderr_console, visible
from .experiment import STATUS_STYLE, exit_if_every_case_errored, load_experiment, print_result
from .progress import ProgressDisplay, print_run_summary

__all__ = ["runs_app"]

runs_app = typer.Typer(
    help="Run history: list every run folder; show, summarize, compare and rerun experiment runs.",
    no_args_is_help=True,
)

RootOpt = typer.Option(Path("runs"), "--root", help="Folder holding the run folders.")
RunArg = typer.Argument(..., help="A run folder, or its name under --root.")
_CUT = 60


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"


def _money(usd: float | None) -> str:
    return "n/a" if usd is None else f"${usd:,.4f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}s"


def _short(value: Any) -> str:
    """``value`` on one line (controls and newlines as escapes), cut at ``_CUT`` characters."""
    text = visible(
        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str), lines=False
    )
    return text if len(text) <= _CUT else text[: _CUT - 1] + "…"


def _when(run: RunRecord) -> str:
    return run.started_at[:19].replace("T", " ")


def _status(status: str | None) -> str:
    if status is None:
        return "—"
    return f"[{STATUS_STYLE.get(status, 'dim')}]{shown(status, lines=False)}[/]"


def _load(run: str, root: Path) -> RunRecord:
    with exit_on_errors(stderr_console()):
        return load_run(run, root)


JsonOpt = typer.Option(False, "--json", help="Print JSON (machine-readable) instead of tables.")


def _print_json(value: Any) -> None:
    typer.echo(json_text(json.dumps(value, indent=2, ensure_ascii=False, default=str)))


@runs_app.command("list")
def list_command(root: Path = RootOpt, as_json: bool = JsonOpt) -> None:
    """Every run folder under --root, newest first: kind (experiment or run), when, experiment or
    chain, pass rate, cases or records, cost, time.

    [dim]Example:[/]  chainette runs list --root runs
    """
    runs, damaged = scan_runs(root, plain=True)
    err = stderr_console()
    for folder, reason in damaged:  # one damaged folder does not hide the others
        err.print(f"[yellow]![/] skipped {shown(folder)}: {shown(reason)}", soft_wrap=True)
    if as_json:
        _print_json([r.summary() for r in runs])
        return
    out = _out()
    if not runs:
        out.print(f"No runs under {shown(str(root))} (no folder there has experiment.json or metadata.json).")
        return
    table = Table(title=f"Runs under {shown(str(root))}", title_justify="left")
    for column in ("id", "kind", "when", "experiment / suite", "pass rate", "cases", "cost", "duration"):
        right = column in ("pass rate", "cases", "cost", "duration")
        wraps = column in ("experiment / suite", "when")  # a date and a time: two lines when narrow
        table.add_column(column, justify="right" if right else "left", no_wrap=not wraps)
    for run in runs:
        if run.kind == "experiment":
            suite = run.data.get("suite") or {}
            where = Path(suite["path"]).name if suite.get("path") else "python"
            what = f"{shown(run.experiment, lines=False)} / {shown(where, lines=False)}"
        else:  # a plain run: its chain, and its status when it did not complete
            status = str(run.metadata.get("status") or "?")
            what = shown(run.experiment, lines=False) + (
                "" if status == "completed" else f" ({shown(status)})"
            )
        table.add_row(
            shown(run.id, lines=False),
            run.kind,
            _when(run),
            what,
            _rate(run.pass_rate),
            "" if run.size is None else str(run.size),
            _money(run.cost_usd),
            _seconds(run.duration_s),
        )
    out.print(table)
    if any(run.kind == "run" for run in runs):
        out.print(
            "[dim]kind run: a plain `chainette run` (cases: records read); see it with chainette report RUN[/]"
        )


@runs_app.command("show")
def show(
    run: str = RunArg,
    root: Path = RootOpt,
    case: str | None = typer.Option(
        None, "--case", help="Show this case in full: output, assessments, tokens, cost and timeline."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """A run's stored config, git commit, suite, every case (status, score, time, cost) and totals.

    [dim]Example:[/]  chainette runs show calc-1 --case add-small
    """
    record = _load(run, root)
    if case is not None:
        found = record.case(case)
        if found is None:
            ids = [str(c.get("id")) for c in record.cases]
            close = difflib.get_close_matches(case, ids, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            stderr_console().print(
                f"[red]Error:[/] run {shown(record.id, lines=False)} has no case {shown(repr(case))}.{shown(hint)} "
                f"Its cases: {shown(', '.join(ids[:20]))}{' …' if len(ids) > 20 else ''}.",
                soft_wrap=True,
            )
            raise typer.Exit(1)
        if as_json:
            _print_json(found)
        else:
            _show_case(_out(), record, found)
        return
    if as_json:
        _print_json({"id": record.id, "path": str(record.path), **record.data})
        return
    out = _out()
    out.print(
        f"[bold]{shown(record.experiment, lines=False)}[/] run {shown(record.id, lines=False)} ({_when(record)}) in {shown(str(record.path))}"
    )
    git = record.data.get("git")
    if git:
        out.print(f"git {shown(str(git.get('commit')))}{' (dirty)' if git.get('dirty') else ''}")
    else:
        out.print("git: not recorded (not run in a git work tree)")
    suite = record.data.get("suite") or {}
    out.print(
        f"suite {shown(str(suite.get('path') or '(built in Python)'))}, {suite.get('cases')} cases"
        + (f", sha256 {shown(suite['sha256'][:12])}" if suite.get("sha256") else "")
    )
    config = flatten_config(record.config or {})
    out.print("config: " + (", ".join(f"{shown(k)}={shown(_short(v))}" for k, v in config.items()) or "none"))
    table = Table(title_justify="left")
    for column in ("case", "status", "score", "time", "tokens", "cost", "reason"):
        table.add_column(column, justify="right" if column in ("score", "time", "tokens", "cost") else "left")
    for item in record.cases:
        score = "" if item.get("score") is None else f"{item['score']:g}"
        tokens = item.get("tokens") or {}
        table.add_row(
            shown(str(item.get("id")), lines=False),
            _status(item.get("status")),
            score,
            "" if item.get("duration_s") is None else _seconds(item["duration_s"]),
            str((tokens.get("prompt") or 0) + (tokens.get("completion") or 0)) if tokens else "",
            _money((item.get("cost") or {}).get("usd")) if item.get("cost") else "",
            shown(_short(item.get("reason") or "")),
        )
    out.print(table)
    out.print(_totals_line(record))
    out.print("[dim]One case in full, with its timeline: chainette runs show RUN --case CASE[/]")


_BAR = 20


def _show_case(out: Console, record: RunRecord, case: dict[str, Any]) -> None:
    """One case: status, output, expected, every assessment, tokens and cost per step, timeline."""
    out.print(
        f"case [bold]{shown(str(case.get('id')), lines=False)}[/] of run {shown(record.id, lines=False)}: {_status(case.get('status'))}"
        + ("" if case.get("score") is None else f", score {case['score']:g}")
        + ("" if case.get("duration_s") is None else f", {_seconds(case['duration_s'])}")
    )
    for label, key in (
        ("reason", "reason"),
        ("output", "output"),
        ("expected", "expected"),
        ("error", "error"),
    ):
        if case.get(key) not in (None, ""):
            out.print(f"{label}: {shown(_short(case[key]) if key != 'output' else _full(case[key]))}")
    for name, a in (case.get("assessments") or {}).items():
        metric = "" if a.get("metric") is None else f", metric {a['metric']:g}"
        score = "" if a.get("score") is None else f", score {a['score']:g}"
        out.print(f"  {shown(name)}: passed={a.get('passed')}{score}{metric} {shown(a.get('reason') or '')}")
    steps = case.get("by_step") or {}
    if steps:
        table = Table(title="tokens and cost by step", title_justify="left")
        for column in ("step", "prompt", "completion", "reused tokens", "usd", "saved usd"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for step, row in steps.items():
            table.add_row(
                shown(step),
                str(row.get("prompt")),
                str(row.get("completion")),
                str((row.get("saved_prompt") or 0) + (row.get("saved_completion") or 0)),
                _money(row.get("usd")),
                _money(row.get("saved_usd")),
            )
        out.print(table)
    spans = case.get("timeline") or []
    if not spans:
        out.print("timeline: not recorded for this case")
        return
    end = max(float(s["end_s"]) for s in spans) or 1e-9
    table = Table(
        title=f"timeline (seconds from the experiment's start, {shown(str(record.data.get('timeline_started_at')))})",
        title_justify="left",
    )
    for column in ("node", "run", "start", "end", "chunk", ""):
        table.add_column(column, justify="right" if column in ("start", "end", "chunk") else "left")
    for span in spans:
        a = min(max(int(float(span["start_s"]) / end * _BAR), 0), _BAR - 1)  # clamped: hand-edited spans
        b = min(max(a + 1, round(float(span["end_s"]) / end * _BAR)), _BAR)
        table.add_row(
            shown(str(span["node"])),
            shown(str(span.get("run", "run"))),
            f"{float(span['start_s']):.4f}",
            f"{float(span['end_s']):.4f}",
            str(span.get("chunk", 1)),
            " " * a + "█" * (b - a),
        )
    out.print(table)
    out.print(
        "[dim]Records run in chunks: a span is when the node worked on the chunk holding this case "
        "(chunk: how many records it held).[/]"
    )


def _full(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


@runs_app.command("summarize")
def summarize(run: str = RunArg, root: Path = RootOpt) -> None:
    """Counts by status, pass rate, tokens, cost and cache figures, and the failing cases.

    [dim]Example:[/]  chainette runs summarize runs/calc-1
    """
    record = _load(run, root)
    t = record.totals
    out = _out()
    out.print(_totals_line(record))
    tokens = t.get("tokens") or {}
    out.print(f"tokens: {tokens.get('prompt')} prompt, {tokens.get('completion')} completion")
    cost = t.get("cost") or {}
    out.print(f"cost: {_money(cost.get('usd'))} (the ledger saved {_money(cost.get('saved_usd'))})")
    cache = t.get("cache") or {}
    out.print(
        f"cache: {cache.get('sent')} sent, {cache.get('hits')} from the ledger, {cache.get('deduped')} shared"
        f" (mode {cache.get('mode')}"
        + (f"; over {cache['runs']} runs: turns and judges included" if (cache.get("runs") or 1) > 1 else "")
        + ")"
    )
    failing = [c for c in record.cases if c.get("status") in ("fail", "error")]
    if not failing:
        out.print("no failing or erroring cases")
    for case in failing:
        out.print(
            f"  {_status(case.get('status'))} {shown(str(case.get('id')), lines=False)}: {shown(_short(case.get('reason') or ''))}"
        )


@runs_app.command("compare")
def compare(
    a: str = typer.Argument(..., help="Run A (the baseline)."),
    b: str = typer.Argument(..., help="Run B."),
    root: Path = RootOpt,
    as_json: bool = JsonOpt,
) -> None:
    """What changed from run A to run B: pass rate, cases (with both outputs), cost, time, config.

    [dim]Example:[/]  chainette runs compare calc-1 calc-2
    [dim]Example:[/]  chainette runs compare calc-1 calc-2 --json
    """
    diff = compare_runs(_load(a, root), _load(b, root))
    if as_json:
        _print_json(diff.as_dict())
        return
    out = _out()
    delta = "" if diff.pass_rate_delta is None else f" ({diff.pass_rate_delta * 100:+.1f} pts)"
    out.print(f"pass rate {_rate(diff.a.pass_rate)} → {_rate(diff.b.pass_rate)}{delta}")
    if diff.changed:
        table = Table(title=f"{len(diff.changed)} changed case(s), A → B", title_justify="left")
        timed = any(c.duration_delta is not None for c in diff.changed)
        priced = any(c.cost_delta for c in diff.changed)  # a column of zeros (free engines) is left out
        columns = ["case", "status", "output A", "output B"]
        columns += ["time B−A"] * timed + ["cost B−A"] * priced
        for column in columns:
            table.add_column(column, justify="right" if "−" in column else "left")
        for change in diff.changed:
            dt, dc = change.duration_delta, change.cost_delta
            row = [
                shown(change.id, lines=False),
                f"{_status(change.status_a)} → {_status(change.status_b)}",
                shown(_short(change.output_a)),
                shown(_short(change.output_b)),
            ]
            row += ["n/a" if dt is None else f"{dt:+,.3f}s"] * timed
            row += ["n/a" if dc is None else f"{dc:+,.6f} $"] * priced
            table.add_row(*row)
        out.print(table)
    else:
        out.print("no case changed status or output")
    if diff.only_a:
        out.print(f"only in A: {shown(', '.join(diff.only_a))}")
    if diff.only_b:
        out.print(f"only in B: {shown(', '.join(diff.only_b))}")
    cost = "n/a" if diff.cost_delta is None else f"{diff.cost_delta:+,.4f} $"
    duration = "n/a" if diff.duration_delta is None else f"{diff.duration_delta:+,.2f}s"
    out.print(
        f"cost {_money(diff.a.cost_usd)} → {_money(diff.b.cost_usd)} ({cost}); duration {_seconds(diff.a.duration_s)} → {_seconds(diff.b.duration_s)} ({duration})"
    )
    if diff.config_diff:
        out.print("config differences:")
        for key, (va, vb) in diff.config_diff.items():
            out.print(f"  {shown(key)}: {shown(_short(va))} → {shown(_short(vb))}")
    else:
        out.print("same config")


@runs_app.command("rerun")
def rerun(
    run: str = RunArg,
    root: Path = RootOpt,
    failed_only: bool = typer.Option(
        False, "--failed-only", help="Run only the cases that failed or errored."
    ),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="Run folder to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    ledger: Path | None = typer.Option(
        None, "--ledger", help="Request ledger [dim]\\[default: the run's own][/]."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress, no run summary; the cases table and pass rate only."
    ),
) -> None:
    """Run a recorded experiment again, with the same target and overrides (answers from the ledger).

    Progress is shown on stderr as for [bold]chainette experiment run[/] (none with --quiet).

    [dim]Example:[/]  chainette runs rerun calc-1 --failed-only -o runs/calc-1-retry
    """
    err = stderr_console()
    with exit_on_errors(err):
        record = load_run(run, root)
        how = record.data.get("rerun") or {}
        target = how.get("target")
        if not target:
            raise ExperimentError(
                f"Run {record.id} does not say which experiment made it (it was run from Python, not "
                "with `chainette experiment run`). Rerun it from Python with "
                f"experiment.run(overrides={how.get('overrides', '[...]')!r}), or pass "
                "target='path.py:name' to Experiment.run so that `chainette runs rerun` can."
            )
        overrides = [str(o) for o in how.get("overrides") or []]
        experiment = load_experiment(target)
        if how.get("engines"):
            load_engines(checked_engines(Path(how["engines"])))
        _warn_config(err, record, public_config(c) if (c := experiment.resolve_config(overrides)) else None)
        if failed_only:
            ids = record.failed_ids()
            if not ids:
                err.print(
                    f"Run {shown(record.id, lines=False)} has no failed or erroring case; nothing to rerun."
                )
                raise typer.Exit(0)
            experiment = restrict(experiment, ids)
        cache = record.totals.get("cache") or {}
        use_ledger = ledger or (Path(cache["ledger"]) if cache.get("ledger") else None)
        display = (
            None
            if quiet
            else ProgressDisplay(total=len(load_suite(experiment.suite)), console=err, summary=False)
        )

        async def main() -> ExperimentResult:
            return await experiment.arun(
                output_dir,
                overrides,
                target=target,
                engines=how.get("engines"),
                overwrite=overwrite,
                ledger=use_ledger,
                middleware=[display] if display is not None else [],
            )

        try:
            result = anyio.run(main)
        finally:
            if display is not None:
                display.stop()
    if not quiet:
        print_run_summary(err, result.run.metadata, result.path)
    print_result(result)
    exit_if_every_case_errored(err, result)


def _warn_config(err: Console, record: RunRecord, now: dict[str, Any] | None) -> None:
    before, after = flatten_config(record.config or {}), flatten_config(now or {})
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if keys:
        err.print(
            f"[yellow]Warning:[/] the experiment's code now gives a different config than run "
            f"{shown(record.id, lines=False)} stored ({shown(', '.join(keys))}); rerunning with the code's.",
            soft_wrap=True,
        )


def _totals_line(record: RunRecord) -> str:
    t = record.totals
    return (
        f"pass rate {_rate(record.pass_rate)}: {t.get('pass', 0)} passed, {t.get('fail', 0)} failed, "
        f"{t.get('error', 0)} errors, {t.get('unscored', 0)} unscored of {t.get('cases', len(record.cases))}; "
        f"cost {_money(record.cost_usd)}, {_seconds(record.duration_s)}"
    )
