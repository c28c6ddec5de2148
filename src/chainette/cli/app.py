"""The ``chainette`` command: run, inspect and draw chains, list engines.

Output discipline: what a command produces goes to stdout (for ``run``, only the run folder, as
the last line, so ``out=$(chainette run ...)`` works); progress, summaries and errors go to
stderr. Exit codes (``_common.EXIT_CODES``): 0 done, 1 a ChainetteError (message only, no
traceback), 2 bad usage, 3 every record of the run failed, 130 interrupted.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..engines.registry import (
    BACKENDS,
    is_available,
    list_engines,
    load_engines,
    replaced_by_server,
    replaced_message,
)
from ..graph.chain import ChainGraph
from ..io.inputs import HF_PREFIX, open_inputs
from ..io.text_files import TextFiles, text_files
from ..runtime.events import Middleware
from ..runtime.executor import run_chain
from ..runtime.result import RunResult
from ._common import (
    EXIT_ALL_FAILED,
    EXIT_CODES,
    checked_engines,
    every_record_failed,
    exit_on_errors,
    json_text,
    shown,
    stderr_console,
    visible,
)
from .cache import cache_app
from .experiment import experiment_app
from .graph_tree import chain_tree
from .help_format import install as install_help_format
from .loading import count_jsonl_records, import_target, load_chain, split_target
from .progress import JsonEventLog, ProgressDisplay, print_run_summary
from .report import report
from .runs import runs_app
from .serve import serve
from .servers import kill, print_running_servers, warmup

__all__ = ["app"]

install_help_format()  # flags shown as flags, option names never cut (see help_format.py)

app = typer.Typer(
    name="chainette",
    help="Typed, reproducible LLM pipelines: run a chain over a JSONL file, check it, draw it, serve it over HTTP, "
    "run experiments over suites of cases and report on runs.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold API keys
    # The seed's README spells options with underscores (--output_dir): accept both spellings.
    context_settings={"token_normalize_func": lambda token: token.replace("_", "-")},
    epilog=f"{EXIT_CODES}\n\nOptions may also be written with underscores: --output_dir is --output-dir.",
)

app.add_typer(cache_app, name="cache")
app.add_typer(experiment_app, name="experiment")
app.add_typer(runs_app, name="runs")

TargetArg = Annotated[
    str,
    typer.Argument(
        help="The chain: [bold]path/to/file.py:chain[/], [bold]package.module:chain[/] or [bold]chain.yaml[/]."
    ),
]
EnginesOpt = Annotated[
    Path | None,
    typer.Option(
        "--engines",
        "-e",
        help="engines.yml to register (after the chain module is imported, so it replaces same-named engines).",
    ),
]


class OutputFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"


class ExecutorName(StrEnum):
    local = "local"
    ray = "ray"


class TextPer(StrEnum):
    file = "file"
    paragraph = "paragraph"
    line = "line"


class DagFormat(StrEnum):
    tree = "tree"
    mermaid = "mermaid"
    dot = "dot"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chainette {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Typed, reproducible LLM pipelines. Every command has --help."""


@app.command()
def run(
    target: TargetArg,
    inputs: str = typer.Option(
        ...,
        "--inputs",
        "-i",
        help="JSONL file (one JSON object per line), Parquet or CSV file, a folder of such files, a "
        "dataset folder written by datasets' save_to_disk, hf:NAME (a Hugging Face dataset by name or "
        "local dataset folder, through datasets.load_dataset), or with --per a glob of text / Markdown files.",
    ),
    per: TextPer | None = typer.Option(
        None,
        "--per",
        help="Read -i as a glob of text / Markdown files ('notes/*.md'): one record per file, paragraph "
        "or line, with the fields text, path, part.",
    ),
    split: str | None = typer.Option(
        None, "--split", help="The split to read from a dataset or folder with several (train, test, ...)."
    ),
    column: list[str] = typer.Option(
        [],
        "--column",
        help="FIELD=COLUMN: the input column the input model's FIELD reads (repeatable), e.g. --column text=content.",
    ),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", "-o", help="Run folder to write [dim]\\[default: runs/<chain>-<run id>][/]."
    ),
    engines: EnginesOpt = None,
    fmt: OutputFormat = typer.Option(
        OutputFormat.jsonl, "--format", help="Format of step outputs and flattened/."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing, non-empty run folder."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue this run folder (after a crash, Ctrl-C or a change to the chain): requests in the "
        "ledger are not sent again, and the folder ends as an uninterrupted run's.",
    ),
    ledger: Path | None = typer.Option(
        None,
        "--ledger",
        help="Request ledger (SQLite) [dim]\\[default: $CHAINETTE_LEDGER or .chainette/ledger.sqlite][/].",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the ledger."),
    refresh_cache: bool = typer.Option(
        False, "--refresh-cache", help="Send every request again and overwrite what the ledger holds."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first unreadable input line (else: failures)."
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Records read together (overrides chain.batch_size); each still goes on alone.",
    ),
    workers: int = typer.Option(
        4,
        "--workers",
        min=1,
        help="Sizes the default --max-in-flight (with --executor ray: chunks per replica).",
    ),
    max_in_flight: int | None = typer.Option(
        None,
        "--max-in-flight",
        min=1,
        help="Records in flight at once (default: max(256, batch size x workers, 2 x the largest "
        "max_concurrency x the engine steps, at most 4)).",
    ),
    ordered: bool = typer.Option(
        True,
        "--ordered/--as-finished",
        help="flattened/ in input order (a bounded reorder window), or rows as records finish (each has _index).",
    ),
    executor: ExecutorName = typer.Option(
        ExecutorName.local,
        "--executor",
        help="Where the chain runs: this process, or Ray actors (needs chainette\\[ray]).",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="With --executor ray: the cluster to join ('auto', host:6379, ray://host:10001) "
        "[dim]\\[default: a local Ray instance][/].",
    ),
    replicas: int = typer.Option(
        2, "--replicas", min=1, help="With --executor ray: actors running the chain, each with its engines."
    ),
    max_lines_per_file: int = typer.Option(
        100_000, "--max-lines-per-file", min=1, help="Rows per output file part."
    ),
    record_deadline_s: float | None = typer.Option(
        None,
        "--record-deadline-s",
        min=0.001,
        help="Seconds each record may take through the whole chain; later it fails (budget_exceeded).",
    ),
    record_token_budget: int | None = typer.Option(
        None,
        "--record-token-budget",
        min=1,
        help="Tokens each record may spend through the whole chain; then it fails (budget_exceeded).",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress, no summary; errors and failure counts only."
    ),
    json_logs: bool = typer.Option(
        False, "--json-logs", help="One JSON line per run event on stderr, no live display."
    ),
) -> None:
    """Run a chain over a JSONL, Parquet or CSV file (or a folder, or a saved dataset) and write a run folder.

    Progress is shown on stderr; the run folder is printed on stdout as the [bold]last line[/].
    Records that fail are written to [bold]failures.jsonl[/] and do not stop the run (exit 0);
    when every record failed (e.g. the server is down) the exit status is 3.

    [dim]Example:[/]  chainette run examples/quickstart.py:chain -i examples/quickstart.jsonl -o runs/quickstart
    """
    err = stderr_console()
    started: dict[str, Any] = {}
    display: ProgressDisplay | None = None
    with exit_on_errors(err, started):
        if no_cache and refresh_cache:
            raise typer.BadParameter("--no-cache and --refresh-cache exclude each other.")
        if address is not None and executor is not ExecutorName.ray:
            raise typer.BadParameter("--address is for --executor ray.")
        chain = load_chain(target)
        if engines is not None:
            load_engines(checked_engines(engines))
        if batch_size is not None:
            chain.batch_size = batch_size
        columns = _column_options(column)
        spec = _input_spec(inputs, per)
        # the file's kind, split and columns are checked now, before engines start or a display shows
        source = open_inputs(spec, split=split, columns=columns, model=chain.input_model)
        middleware: list[Middleware] = []  # the log or the display read the run's one event stream
        if json_logs:
            middleware.append(JsonEventLog())
        elif not quiet:
            total = (
                count_jsonl_records(source) if isinstance(source, Path) else getattr(source, "total", None)
            )
            display = ProgressDisplay(chain, total=total, console=err, summary=False)
            middleware.append(display)

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "run_started":  # where the run went, for the message after an interrupt
                started.update(data)

        try:
            result = _run_blocking(
                chain,
                source,
                output_dir,
                overwrite=overwrite,
                resume=resume,
                ledger=ledger,
                cache="off" if no_cache else "refresh" if refresh_cache else "use",
                fmt=fmt.value,
                strict_inputs=strict,
                split=split,
                columns=columns,
                workers=workers,
                max_in_flight=max_in_flight,
                ordered=ordered,
                executor=executor.value,
                ray_address=address,
                replicas=replicas,
                max_lines_per_file=max_lines_per_file,
                record_deadline_s=record_deadline_s,
                record_token_budget=record_token_budget,
                on_event=on_event,
                middleware=middleware,
            )
        finally:
            if display is not None:
                display.stop()
    meta = result.metadata
    if json_logs:
        summary = {key: meta.get(key) for key in ("counts", "tokens", "cache", "cost", "duration_s")}
        JsonEventLog()("summary", {**summary, "output_dir": str(result.path)})
    else:
        print_run_summary(err, meta, result.path, brief=quiet)
    typer.echo(str(result.path))
    if every_record_failed(meta):
        err.print(
            f"[bold red]Every record failed[/] ({meta['counts']['failures']:,}): exit status {EXIT_ALL_FAILED}. "
            f"Reasons in {shown(str(result.path / 'failures.jsonl'))}.",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_ALL_FAILED)


def _input_spec(inputs: str, per: TextPer | None) -> Path | str | TextFiles:
    """What ``-i`` names: text files (with ``--per``), a dataset by name (``hf:``), or a path."""
    if per is not None:
        return text_files(inputs, per=per.value)
    if inputs.startswith(HF_PREFIX):
        return inputs
    if any(c in inputs for c in "*?[") and not Path(inputs).exists():
        raise typer.BadParameter(
            f"-i {inputs!r} is a glob: to read text or Markdown files, add --per file|paragraph|line; "
            "for shards of one dataset, pass their folder."
        )
    return Path(inputs)


def _column_options(values: list[str]) -> dict[str, str] | None:
    """``["text=content", ...]`` → ``{"text": "content"}``."""
    columns: dict[str, str] = {}
    for value in values:
        field, sep, name = value.partition("=")
        if not sep or not field.strip() or not name.strip():
            raise typer.BadParameter(
                f"--column takes FIELD=COLUMN (the input model's field, then the input's column), got {value!r}; "
                "e.g. --column text=content."
            )
        columns[field.strip()] = name.strip()
    return columns or None


@app.command()
def inspect(target: TargetArg, engines: EnginesOpt = None) -> None:
    """Check a chain without sending any request: templates, model fit, engines.

    Prints the graph, then errors and warnings. Exits 1 when there are errors.

    [dim]Example:[/]  chainette inspect examples/quickstart.py:chain --engines engines.yml
    """
    err = stderr_console()
    with exit_on_errors(err):
        chain = load_chain(target)
        if engines is not None:
            load_engines(checked_engines(engines))
        report = chain.check(engine_known=is_available)  # what `run` accepts: warmup servers too
        # an engine registered in code that a warmup server replaces: said as a run says it
        replaced = [replaced_message(n, r) for n in chain.engine_names() if (r := replaced_by_server(n))]
    out = Console(highlight=False)
    out.print(chain_tree(chain, report))
    for title, messages, style, mark in (
        ("Errors", [i.message for i in report.errors], "red", "✗"),
        ("Warnings", replaced + [i.message for i in report.warnings], "yellow", "!"),
    ):
        if messages:
            out.print(f"\n[bold {style}]{title} ({len(messages)})[/]")
            for message in messages:
                out.print(f"  [{style}]{mark}[/] {shown(message)}", soft_wrap=True)
    if report.errors:
        out.print(f"\n[red]✗ {len(report.errors)} error(s): fix them before running.[/]")
        raise typer.Exit(1)
    out.print("\n[green]✓ No errors: the chain can run.[/]")


@app.command("inspect-dag")
def inspect_dag(
    target: TargetArg,
    fmt: DagFormat = typer.Option(
        DagFormat.tree,
        "--format",
        "-f",
        help="tree (readable), mermaid (for docs), dot (Graphviz: pipe into [bold]dot -Tsvg[/]), json (graph.json's shape).",
    ),
) -> None:
    """Print a chain's graph only (no checks, no engines needed).

    [dim]Example:[/]  chainette inspect-dag examples/quickstart.py:chain --format dot | dot -Tsvg > chain.svg
    """
    with exit_on_errors(stderr_console()):
        chain = load_chain(target)
    # names come from the chain's code or YAML file: control characters are shown as escapes
    if fmt is DagFormat.mermaid:
        typer.echo(visible(chain.to_mermaid()))
    elif fmt is DagFormat.dot:
        typer.echo(visible(chain.to_dot()))
    elif fmt is DagFormat.json:
        typer.echo(json_text(json.dumps(chain.describe(), indent=2, ensure_ascii=False)))
    else:
        Console(highlight=False).print(chain_tree(chain, None))


def _run_blocking(chain: ChainGraph, inputs: Any, output_dir: Path | None, **options: Any) -> RunResult:
    async def main() -> RunResult:
        return await run_chain(chain, inputs, output_dir, **options)

    return anyio.run(main)


@app.command()
def engines(
    engines_file: EnginesOpt = None,
    chain_target: str | None = typer.Option(
        None, "--chain", "-c", help="Import this chain's module first (it usually registers engines)."
    ),
) -> None:
    """List registered engines (name, backend, model, options), back-ends and servers started by warmup.

    [dim]Example:[/]  chainette engines --engines engines.yml --chain examples/quickstart.py:chain
    """
    chain: ChainGraph | None = None
    with exit_on_errors(stderr_console()):
        if chain_target is not None:
            source, attr = split_target(chain_target)
            chain = load_chain(chain_target) if attr else None
            if chain is None:
                import_target(source)
        if engines_file is not None:
            load_engines(checked_engines(engines_file))
    users: dict[str, list[str]] = {}
    for node in chain.iter_nodes() if chain else ():
        if node.engine_name is not None:
            users.setdefault(node.engine_name, []).append(node.id)
    table = Table(title="Engines", title_justify="left")
    for column in ("name", "backend", "model", "options", *(["used by"] if chain else [])):
        table.add_column(column)
    registered = list_engines()
    for config in registered:
        options = ", ".join(f"{k}={v!r}" for k, v in config.public_options().items())
        row = [config.name, config.backend, config.model or "(default)", options]
        table.add_row(*map(shown, row), *([shown(", ".join(users.get(config.name, [])))] if chain else []))
    for missing in sorted(set(users) - {c.name for c in registered}):
        table.add_row(
            f"[red]{shown(missing)}[/]", "[red]not registered[/]", "", "", shown(", ".join(users[missing]))
        )
    out = Console(highlight=False)
    if table.row_count:
        out.print(table)
    else:
        out.print(
            "No engines registered. Use register_engine(...) in the chain module, or --engines engines.yml."
        )
    out.print(f"Back-ends: {', '.join(sorted(BACKENDS))}")
    print_running_servers(out)


app.command()(report)

# Registered last, so --help lists them after the commands above.
app.command()(warmup)
app.command()(kill)
app.command()(serve)
