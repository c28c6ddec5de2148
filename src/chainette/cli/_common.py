"""What every command shares: the stderr console, how errors end a command, and how text from a
model, a file or a run folder is shown.

Exit codes (:data:`EXIT_CODES`, also in ``chainette --help``): 0 done, 1 a ChainetteError (a
definition error or a run that stopped; message only, no traceback), 2 bad usage (click's), 3 a
run in which every record failed, 130 Ctrl-C. Other exceptions are bugs and keep their traceback.

Text that came from a model, a file or a run folder (outputs, reasons, case ids, names, paths,
error messages that echo input) goes through :func:`visible` before it is printed: a terminal
acts on control characters (``ESC ]0;title BEL`` sets the window title, ``ESC ]52;c;…`` writes
the clipboard, ``\\r`` rewrites a line, bidi overrides reorder what is read), so they are shown as
escapes (``\\x1b``, ``\\u202e``) instead. :func:`shown` adds rich's markup escaping, so a
``[bold]`` in a model's answer is printed as written.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from .._errors import ChainetteError, EngineConfigError
from ..engines.secrets import scrub_text

__all__ = [
    "EXIT_ALL_FAILED",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "check_file",
    "checked_engines",
    "every_record_failed",
    "exit_on_errors",
    "json_text",
    "shown",
    "stderr_console",
    "visible",
]

EXIT_ERROR = 1
"""A ChainetteError: the chain, an engine definition, an input or the run folder is wrong, or the
run stopped. The message says what to do."""
EXIT_ALL_FAILED = 3
"""The run ended, but every record failed (e.g. the server is down): nothing came out. For an
experiment (``experiment run``, ``runs rerun``): every case errored."""
EXIT_INTERRUPTED = 130
EXIT_CODES = (
    "Exit codes: 0 done (some records may have failed: see failures.jsonl); 1 an error in the chain, "
    "an engine definition, the inputs or the run folder, or a run that stopped; 2 bad usage (an "
    "unknown option, a missing argument); 3 the run ended but every record failed (an experiment: "
    "every case errored); 130 interrupted."
)
"""What each exit status means, for ``--help`` and the docs."""


def every_record_failed(meta: dict[str, Any]) -> bool:
    """Did a finished run (its ``metadata.json``) read records and fail every one of them, so that
    nothing was written and nothing filtered?"""
    counts: dict[str, int] = meta.get("counts") or {}
    return bool(
        counts.get("records_in", 0) > 0
        and counts.get("failures", 0) > 0
        and counts.get("records_out", 0) == 0
        and counts.get("filtered", 0) == 0
    )


_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
"""C0 controls but tab and newline, DEL, C1 controls, and the bidi marks, embeddings, overrides
and isolates (and the Unicode line separators, which some terminals break lines on)."""
_CONTROLS_ALL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""The same, with tab and newline: for what must stay on one line."""


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: Any, *, lines: bool = True) -> str:
    """``text`` (made a string) with every control character a terminal would act on shown as an
    escape: ESC is ``\\x1b``, BEL ``\\x07``, a right-to-left override ``\\u202e``.

    ``lines``: keep newlines and tabs (multi-line outputs); False escapes them too, for what must
    stay on one line (ids, names, table cells).

    Example:
        >>> visible("ok\\x1b]0;PWNED\\x07")
        'ok\\\\x1b]0;PWNED\\\\x07'
    """
    pattern = _CONTROLS if lines else _CONTROLS_ALL
    return pattern.sub(_escape_char, text if isinstance(text, str) else str(text))


def shown(text: Any, *, lines: bool = True) -> str:
    """:func:`visible`, then rich's markup escaping: what to put in a ``console.print`` string or a
    table cell when the text came from a model, a file or a run folder."""
    return escape(visible(text, lines=lines))


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def json_text(dumped: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``, which already escapes C0 controls) with
    DEL, C1 controls and bidi characters written as ``\\uXXXX`` escapes too: the same JSON value,
    nothing a terminal acts on. Such characters only occur inside JSON strings, where the escape
    is valid."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", dumped)


def check_file(path: Path, what: str, error: type[ChainetteError], *, folder_ok: bool = False) -> None:
    """Refuse ``path`` when it exists but is not a regular file (or a folder, with ``folder_ok``):
    a FIFO would block the read, a device such as ``/dev/zero`` never ends. A missing path is left
    to the reader (whose message says what it looked for)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
    alternative = " or a folder" if folder_ok else ""
    raise error(f"{what} {str(path)!r} is {kind}. Give a regular file{alternative}.")


def checked_engines(path: Path) -> Path:
    """``--engines PATH``, refused when it is not a regular file (see :func:`check_file`)."""
    check_file(path, "--engines", EngineConfigError)
    return path


def stderr_console() -> Console:
    """Where progress, summaries and errors go (stdout is for what a command produces)."""
    return Console(stderr=True, highlight=False)


@contextmanager
def exit_on_errors(err: Console, run_folder: dict[str, Any] | None = None) -> Iterator[None]:
    """ChainetteError → red message and exit 1; Ctrl-C → exit 130. Other errors are bugs: traceback.

    ``run_folder``: filled in by a run as it starts; its ``output_dir`` is named in the message.
    Messages echo what they were given (paths, ids, model output): shown through :func:`visible`.
    """
    where = ""
    try:
        yield
    except ChainetteError as exc:
        if run_folder and run_folder.get("output_dir"):
            where = (
                f"\nWhat was written before the error is in {run_folder['output_dir']} (see metadata.json)."
            )
        err.print(f"[bold red]Error:[/] [red]{shown(scrub_text(str(exc)))}[/]{shown(where)}", soft_wrap=True)
        for note in getattr(exc, "__notes__", ()):
            err.print(f"[dim]{shown(scrub_text(note))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        if run_folder and run_folder.get("output_dir"):
            where = f" Partial results are in {run_folder['output_dir']} (metadata.json status: interrupted)."
        err.print(f"[yellow]Interrupted.[/]{shown(where)}", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
