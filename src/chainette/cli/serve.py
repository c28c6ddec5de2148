"""``chainette serve``: a chain behind HTTP (SSE and WebSocket) on uvicorn, on 127.0.0.1 by default.

The app is :func:`chainette.serving.create_app`; this module parses, prints and runs uvicorn.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path
from typing import Any

import typer

from .._errors import MissingDependencyError, ServiceError
from ..engines.registry import load_engines
from ..runtime.service import TERMINAL, TraceEvent
from ..serving import DEFAULT_MAX_BODY, create_app
from ..serving.page_data import read_examples
from ._common import exit_on_errors, shown, stderr_console
from .loading import load_chain

__all__ = ["serve"]


def serve(
    target: str = typer.Argument(
        ...,
        help="The chain: [bold]path/to/file.py:chain[/], [bold]package.module:chain[/] or [bold]chain.yaml[/].",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: a free one, printed)."),
    engines: Path | None = typer.Option(None, "--engines", "-e", help="engines.yml to register."),
    token_env: str | None = typer.Option(
        None,
        "--token-env",
        help="Name of an environment variable holding a bearer token every client must send (never logged).",
    ),
    ledger: Path | None = typer.Option(
        None,
        "--ledger",
        help="Request ledger (SQLite) [dim]\\[default: $CHAINETTE_LEDGER or .chainette/ledger.sqlite][/].",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the ledger."),
    record_to: Path | None = typer.Option(
        None, "--record-to", help="Record every finished trace in this run folder (like a batch run's)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --record-to if it holds an earlier run."
    ),
    capacity: int = typer.Option(1024, "--capacity", min=1, help="Traces held at once (queued + running)."),
    concurrency: int = typer.Option(64, "--concurrency", min=1, help="Traces running at once."),
    refuse_when_full: bool = typer.Option(
        False, "--refuse-when-full", help="Answer 503 when full (default: the submission waits for room)."
    ),
    deadline_s: float | None = typer.Option(
        None, "--deadline-s", min=0.001, help="Default deadline of a trace."
    ),
    max_body_bytes: int = typer.Option(
        DEFAULT_MAX_BODY, "--max-body-bytes", min=1, help="Largest accepted body."
    ),
    allow_origin: list[str] = typer.Option(
        [],
        "--allow-origin",
        help="A web origin (https://app.example) whose pages may call the server (repeatable; '*': any). "
        "Default: only the server's own page.",
    ),
    allow_host: list[str] = typer.Option(
        [],
        "--allow-host",
        help="A name clients reach the server by, beyond localhost and the address it listens on "
        "(a proxy's, a LAN name; repeatable; '*': any).",
    ),
    example: list[Path] = typer.Option(
        [],
        "--example",
        help="A JSON file of example inputs the page offers (one object, a list, or .jsonl; repeatable).",
    ),
) -> None:
    """Serve a chain over HTTP: POST a record to [bold]/runs[/] and read its events as SSE, or use [bold]/ws[/].

    Engines start before the server listens and stay warm. A page at [bold]/[/] lets a person type an input and watch the steps and tokens arrive.

    [dim]Example:[/]  chainette serve examples/quickstart.py:chain --port 8000
    [dim]then:[/]     curl -N -X POST localhost:8000/runs -H 'Content-Type: application/json' -d '{"text": "Why is the sky blue?"}'
    """
    err = stderr_console()
    with exit_on_errors(err):
        try:
            import uvicorn
        except ImportError as exc:
            raise MissingDependencyError("Serving needs uvicorn: pip install 'chainette[serve]'.") from exc
        chain = load_chain(target)
        if engines is not None:
            load_engines(engines)
        _check_port(host, port)  # before engines start: uvicorn would only log it, after starting them
        log = logging.getLogger("chainette.serving")
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        said = logging.StreamHandler()  # the service's start warnings (and any other), timed alike
        said.setFormatter(logging.Formatter("%(asctime)s ! %(message)s", "%H:%M:%S"))
        logging.getLogger("chainette").addHandler(said)

        def log_ending(event: TraceEvent) -> None:
            if event.kind in TERMINAL:
                where = f" at {event.data['node']}" if event.kind == "failed" else ""
                log.info("trace %s %s%s in %.2f s", event.trace_id, event.kind, where, event.at)

        app = create_app(
            chain,
            on_event=log_ending,
            token_env=token_env,
            max_body_bytes=max_body_bytes,
            allowed_origins=allow_origin,
            allowed_hosts=allow_host,
            examples=[value for path in example for value in read_examples(path)],
            ledger=ledger,
            cache="off" if no_cache else "use",
            record_to=record_to,
            overwrite=overwrite,
            capacity=capacity,
            concurrency=concurrency,
            when_full="refuse" if refuse_when_full else "wait",
            deadline_s=deadline_s,
        )
        err.print(f"Serving [bold]{shown(chain.name)}[/] (engines start first)...")
        # access_log off: a line per request is noise; create_app's filter scrubs tokens from the rest
        config: dict[str, Any] = {"host": host, "port": port, "access_log": False, "log_level": "info"}
        try:
            uvicorn.run(_QuietStartup(app), **config)
        except SystemExit:
            startup_error = getattr(app.state, "startup_error", None)
            if startup_error is not None:
                raise startup_error from None  # one line (exit_on_errors), not uvicorn's traceback
            raise


def _check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on, saying which and what to do. Bound the way
    uvicorn binds (``SO_REUSEADDR``), so a port in TIME_WAIT after a server just stopped is free."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        return  # an unknown host: uvicorn's own message says so
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ServiceError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from exc
            raise ServiceError(
                f"Port {port} on {host} is already in use (another server, or an earlier `chainette serve` "
                f"still running). Stop it, or pick another port: --port {port + 1 if port < 65535 else 8000}, "
                "or --port 0 for a free one."
            ) from None


class _QuietStartup:
    """The app, with a startup that failed on a ChainetteError (``--record-to`` a folder it cannot
    write, an engine that cannot start) reported by the CLI as one line instead of uvicorn's
    traceback of it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed" and getattr(
                self.app.state, "startup_error", None
            ):
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, quiet)
