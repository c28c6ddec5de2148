"""What the CLI prints about a run besides the live display: its events as JSON lines
(:class:`JsonEventLog`, ``--log-format json``) and the summary at its end (:func:`print_run_summary`).
Re-exported by :mod:`.progress`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from ..runtime.events import Event
from ._common import json_text, shown

__all__ = ["JsonEventLog", "print_run_summary"]


class JsonEventLog:
    """Writes each event as one JSON line on stderr: ``{"ts": ..., "event": kind, **data}`` (with
    ``"trace_id"`` after ``event`` for a served trace's events).

    Example:
        >>> chain.run("inputs.jsonl", "runs/x", middleware=[JsonEventLog()])  # doctest: +SKIP
        {"ts":1718000000.123,"event":"run_started","chain":"qa",...}
    """

    def __call__(self, event: Event | str, data: dict[str, Any] | None = None) -> None:
        """Write one event: an :class:`Event` (middleware) or ``(kind, data)`` (``on_event=``)."""
        if isinstance(event, Event):
            head: dict[str, Any] = {"ts": round(event.at, 3), "event": event.kind}
            if event.trace_id is not None:
                head["trace_id"] = event.trace_id
            data = event.data
        else:
            head = {"ts": round(time.time(), 3), "event": event}
        line = orjson.dumps({**head, **(data or {})}, default=str)
        sys.stderr.write(json_text(line.decode()) + "\n")  # C1 and bidi characters as \\u escapes


def print_run_summary(console: Console, meta: dict[str, Any], path: Path, *, brief: bool = False) -> None:
    """Counts, tokens and duration of a finished run (``metadata.json``); ``brief``: failures only.

    ``brief`` also names the engines that stopped (the live display, when shown, already did).
    """
    counts = meta["counts"]
    failed = counts.get("failures", 0)
    for warning in meta.get("warnings") or ():
        console.print(f"[bold yellow]! {shown(warning)}[/]", soft_wrap=True)
    if brief:
        for name, engine in (meta.get("engines") or {}).items():
            if engine.get("error"):
                console.print(
                    f"[bold red]✗ engine {shown(name)} stopped[/]: {shown(engine['error'])}", soft_wrap=True
                )
    if not brief:
        mark = "[yellow]![/]" if failed else "[green]✓[/]"
        console.print(
            f"{mark} Done in {_duration(meta.get('duration_s') or 0.0)}: {counts['records_in']:,} records in, "
            f"{counts['records_out']:,} out, {failed:,} failed, {counts.get('filtered', 0):,} filtered",
            soft_wrap=True,
        )
        tokens = meta.get("tokens") or {}
        if tokens.get("by_step"):
            console.print(f"  tokens: {tokens['prompt']:,} prompt + {tokens['completion']:,} completion")
        cache = meta.get("cache") or {}
        if cache.get("sent") or cache.get("unsent") or cache.get("hits") or cache.get("deduped"):
            saved = cache.get("saved_tokens") or {}
            unsent = (
                f"{cache['unsent']:,} failed to send (no server reached), " if cache.get("unsent") else ""
            )
            cost = meta.get("cost") or {}
            dollars = ""
            if cost.get("usd") is not None and (cost["usd"] or cost.get("saved_usd")):  # local engines: no $0
                dollars = f"; cost ${cost['usd']:,.4f}, saved ${cost.get('saved_usd') or 0:,.4f}"
            console.print(
                f"  requests: {cache.get('sent', 0):,} sent, {unsent}{cache.get('hits', 0):,} from the ledger, "
                f"{cache.get('deduped', 0):,} duplicates shared "
                f"(saved {saved.get('prompt', 0) + saved.get('completion', 0):,} tokens{dollars})",
                soft_wrap=True,
            )
    if failed:
        where = shown(str(path / "failures.jsonl"))
        console.print(f"  [red]{failed:,} record(s) failed[/]; reasons in {where}", soft_wrap=True)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
