"""``chainette warmup`` / ``chainette kill``: local inference servers that later runs use.

The logic is in :mod:`chainette.engines.servers`; these commands only parse, print and exit.
:mod:`.app` registers them on the ``chainette`` app (this module does not import it).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .._errors import EngineConfigError
from ..engines import servers
from ..engines.registry import load_engines
from ._common import exit_on_errors, shown, stderr_console

__all__ = ["kill", "print_running_servers", "running_servers_table", "warmup"]


def warmup(
    file: Path = typer.Option(..., "--file", "-f", help="engines.yml holding the engine definitions."),
    engine: list[str] = typer.Option(
        [], "--engine", "-e", help="Engine to start (repeatable). It needs a [bold]serve:[/] section."
    ),
    all_: bool = typer.Option(
        False, "--all", help="Start every engine of the file that has a serve: section."
    ),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="Port (one engine only; default: free)."
    ),
    timeout: float | None = typer.Option(None, "--timeout", min=1, help="Seconds to wait for it to answer."),
) -> None:
    """Start engines as local OpenAI-compatible servers on 127.0.0.1 and record them.

    Later [bold]chainette run[/] / [bold]Chain.run[/] calls in this folder use the running server for
    an engine of that name. Prints each server's base URL on stdout.

    [dim]Example:[/]  chainette warmup -f engines.yml -e small
    """
    err = stderr_console()
    with exit_on_errors(err):
        configs = {c.name: c for c in load_engines(file, register=False)}
        names = [n for n, c in configs.items() if "serve" in c.options] if all_ else list(engine)
        if not names:
            raise EngineConfigError("Name the engine(s) to start with -e NAME, or pass --all.")
        unknown = [n for n in names if n not in configs]
        if unknown:
            raise EngineConfigError(
                f"{file}: no engine named {', '.join(map(repr, unknown))}; it defines {', '.join(map(repr, configs))}."
            )
        if port is not None and len(names) > 1:
            raise EngineConfigError("--port needs a single engine (-e NAME).")
        for name in names:
            err.print(f"Starting [bold]{shown(name)}[/] (waiting until it answers)...")
            record = servers.warmup(configs[name], port=port, timeout=timeout)
            err.print(
                f"[green]✓[/] {shown(name)}: pid {record.pid}, {shown(record.base_url)}; log {shown(record.log)}"
            )
            typer.echo(record.base_url)


def kill(
    names: list[str] = typer.Argument(None, help="Engines to stop.", show_default=False),
    all_: bool = typer.Option(False, "--all", help="Stop every server that warmup started."),
) -> None:
    """Stop servers started by [bold]chainette warmup[/] (only those: by recorded PID and command line).

    [dim]Example:[/]  chainette kill small   ·   chainette kill --all
    """
    err = stderr_console()
    with exit_on_errors(err):
        targets = [r.name for r in servers.list_servers(alive_only=False)] if all_ else list(names or [])
        if not targets:
            if all_:
                err.print("No recorded servers.")
                return
            raise EngineConfigError("Name the engine(s) to stop, or pass --all.")
        missing = []
        for name in targets:
            outcome = servers.kill_server(name)
            if outcome == "stopped":
                err.print(f"[green]✓[/] stopped {shown(name)}")
            elif outcome == "stale":
                err.print(
                    f"[yellow]![/] {shown(name)} was no longer running (or its PID is now another program's); record removed"
                )
            else:
                missing.append(name)
        if missing:
            known = ", ".join(repr(r.name) for r in servers.list_servers(alive_only=False)) or "none"
            raise EngineConfigError(
                f"No server recorded as {', '.join(map(repr, missing))}. Recorded servers: {known}."
            )


def running_servers_table() -> Table | None:
    """Warmed-up servers still running, for ``chainette engines``."""
    records = servers.list_servers()
    if not records:
        return None
    table = Table(title=f"Running servers ({servers.state_file()})", title_justify="left")
    for column in ("name", "kind", "pid", "base_url", "started", "log"):
        table.add_column(column)
    for r in records:
        table.add_row(*map(shown, (r.name, r.kind, str(r.pid), r.base_url, r.started_at, r.log)))
    return table


def print_running_servers(out: Console) -> None:
    try:
        table = running_servers_table()
    except EngineConfigError as exc:  # an unreadable state file should not hide the engines listing
        stderr_console().print(f"[yellow]![/] {shown(str(exc))}", soft_wrap=True)
        return
    if table is not None:
        out.print(table)
