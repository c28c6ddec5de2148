"""Live progress of a run on stderr: one bar per node, driven by run events.

:class:`ProgressDisplay` and :class:`JsonEventLog` are middleware of the run's event stream
(``middleware(event)``, see ``runtime/events.py``), so they plug into ``Chain.run(progress=True)``
or ``middleware=[...]``; both also take the plain ``handler(kind, data)`` form of ``on_event=``. Each event is one dict lookup and at most one
``Progress.update``; rich redraws on its own timer, so thousands of events per second are
cheap. When stderr is not a terminal, rich prints the final state once instead of animating.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..runtime.events import Event
from ._common import json_text, shown

if TYPE_CHECKING:
    from ..graph.chain import ChainGraph

__all__ = ["JsonEventLog", "ProgressDisplay", "print_run_summary", "structure"]

_SHOWN_FAILURES = 3
"""How many record failures are printed in full before only the counts go on."""


class _CountColumn(ProgressColumn):
    """``done/total``, or ``done`` while the total is unknown or was outgrown (fan-out)."""

    def render(self, task: Task) -> Text:
        if task.fields.get("heading"):
            return Text("")
        done = int(task.completed)
        open_ended = task.total is None or task.fields.get("grown", False)
        text = f"{done:,}" if open_ended else f"{done:,}/{int(task.total or 0):,}"
        return Text(text, style="progress.download")


class _FailedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = task.fields.get("failed", 0)
        return Text(f"{failed:,} failed", style="bold red") if failed else Text("")


class _CachedColumn(ProgressColumn):
    """How many of a step's answers came from the ledger or a duplicate in flight."""

    def render(self, task: Task) -> Text:
        cached = task.fields.get("cached", 0)
        return Text(f"{cached:,} cached", style="dim cyan") if cached else Text("")


class _DetailColumn(ProgressColumn):
    """What a container reports beside its count (a loop's pass, a map's children)."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("detail") or ""), style="magenta")


class _Bar(BarColumn):
    """A bar for the nodes of the main line only: a heading (a branch or route) has no count of
    its own, and a node inside a container sees a share of the records (a route) or more (a
    loop's passes), so its count stands alone."""

    def render(self, task: Task) -> Any:
        return Text("") if task.fields.get("heading") or task.fields.get("nested") else super().render(task)


class _Elapsed(TimeElapsedColumn):
    def render(self, task: Task) -> Text:
        return Text("") if task.fields.get("heading") else super().render(task)


def structure(chain: ChainGraph) -> list[tuple[str | None, int, str]]:
    """The rows of the display: ``(node id or None for a heading, depth, label)`` in definition
    order, nested under branches, routes, routers, loops and maps. A node with its own stats
    (:attr:`Node.has_stats`) gets a bar; a branch or route is a heading over its nodes; groups
    that only hold others (a parallel group, ``a | b``) add no row."""
    rows: list[tuple[str | None, int, str]] = []

    def visit(nodes: Any, depth: int) -> None:
        for node in nodes:
            children = node.children()
            shown = not children or node.has_stats or node.placement() is not None
            if shown:
                label = node.key if not children else f"{node.kind} {node.name}"
                rows.append((node.id if node.has_stats else None, depth, label))
            visit(children, depth + 1 if shown else depth)

    visit(chain.items, 0)
    return rows


class ProgressDisplay:
    """A live view of a run: a bar per node with records done, total and failures.

    Args:
        chain: The chain being run; its nodes get a bar each, in definition order.
        total: Number of input records, when known (each bar then shows ``done/total``).
        console: Where to draw (default: a console on stderr).
        summary: Print a one-line outcome when the run finishes.

    Example:
        >>> display = ProgressDisplay(chain, total=1000)              # doctest: +SKIP
        >>> chain.run("inputs.jsonl", "runs/x", middleware=[display])  # doctest: +SKIP
    """

    def __init__(
        self,
        chain: ChainGraph | None = None,
        *,
        total: int | None = None,
        console: Console | None = None,
        summary: bool = True,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.total = total
        self.summary = summary
        self.rows = structure(chain) if chain is not None else []
        self.node_ids = [key for key, _, _ in self.rows if key is not None]
        self.failures_shown = 0
        self.engine_errors: list[str] = []
        """Why engines stopped (``engine_failed``): shown once, not again with each record."""
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._width = max((2 * depth + len(label) for _, depth, label in self.rows), default=0)
        self._depth: dict[str, int] = {key: depth for key, depth, _ in self.rows if key is not None}
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "run_started": self._on_run_started,
            "node_progress": self._on_node_progress,
            "engine_started": self._on_engine_started,
            "engine_failed": self._on_engine_failed,
            "record_failed": self._on_record_failed,
            "run_finished": self._on_run_finished,
        }

    def __call__(self, event: Event | str, data: dict[str, Any] | None = None) -> None:
        """Take one event: an :class:`Event` (middleware) or ``(kind, data)`` (``on_event=``)."""
        kind, data = (event.kind, event.data) if isinstance(event, Event) else (event, data or {})
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(data)

    @property
    def active(self) -> bool:
        """Whether the live display is currently drawn."""
        return self._progress is not None

    def start(self, node_ids: list[str] | None = None) -> None:
        """Start drawing (done on ``run_started``; calling it twice is harmless)."""
        if self._progress is not None:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            _Bar(bar_width=30),
            _CountColumn(),
            _DetailColumn(),
            _FailedColumn(),
            _CachedColumn(),
            _Elapsed(),
            console=self.console,
            redirect_stdout=False,  # the chain's own prints stay on stdout
            refresh_per_second=8,
        )
        self._tasks = {}
        if node_ids and not self.rows:  # no chain given: one flat row per node the run names
            self.rows = [(n, 0, n) for n in node_ids]
            self._width = max(len(n) for n in node_ids)
            self._depth = dict.fromkeys(node_ids, 0)
        for key, depth, label in self.rows:
            if key is None:
                text = f"[dim]{shown(('  ' * depth + label).ljust(self._width))}[/]"
                self._progress.add_task(text, total=None, heading=True)
            else:
                self._task(key, label, depth)
        self._progress.start()

    def stop(self) -> None:
        """Stop drawing, leaving the final state on screen (safe to call at any time)."""
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()

    def _task(self, node_id: str, label: str | None = None, depth: int | None = None) -> TaskID:
        task = self._tasks.get(node_id)
        if task is None:
            assert self._progress is not None
            depth = self._depth.get(node_id, 0) if depth is None else depth
            text = f"[bold]{shown(('  ' * depth + (label or node_id)).ljust(self._width))}[/]"
            # inside a container a node sees a share of the records (a route) or more (a loop):
            # its count stands alone, without the input total
            total = self.total if depth == 0 else None
            task = self._tasks[node_id] = self._progress.add_task(
                text, total=total, failed=0, cached=0, nested=depth > 0
            )
        return task

    def _on_run_started(self, data: dict[str, Any]) -> None:
        self.console.print(
            f"[bold]Running[/] {shown(str(data.get('chain', '')))} [dim]→ {shown(str(data.get('output_dir', '')))}[/]",
            soft_wrap=True,
        )
        self.start(list(data.get("nodes") or []))

    def _on_node_progress(self, data: dict[str, Any]) -> None:
        if self._progress is None:
            return
        done = data.get("done", 0)
        task = self._task(data["node"])
        if self.total is not None and done > self.total:
            # Fan-out produced more records than came in: show the count alone, not 130%.
            self._progress.update(
                task,
                total=done,
                completed=done,
                failed=data.get("failed", 0),
                cached=data.get("cached", 0),
                grown=True,
            )
        else:
            self._progress.update(
                task,
                completed=done,
                failed=data.get("failed", 0),
                cached=data.get("cached", 0),
                detail=data.get("detail"),
            )

    def _on_engine_started(self, data: dict[str, Any]) -> None:
        self.console.print(
            f"[dim]engine {shown(str(data.get('engine')))} started in {data.get('seconds', 0):.1f}s[/]"
        )

    def _on_engine_failed(self, data: dict[str, Any]) -> None:
        message = str(data.get("message", ""))
        self.engine_errors.append(message)
        self.console.print(
            f"[bold red]✗ engine {shown(str(data.get('engine')))} stopped[/]: {shown(message)}",
            soft_wrap=True,
        )

    def _on_record_failed(self, data: dict[str, Any]) -> None:
        node = str(data.get("node", ""))
        message = str(data.get("message", ""))
        if any(reason in message for reason in self.engine_errors):
            return  # the engine's failure was shown once; its records are counted in the bars
        if self.failures_shown < _SHOWN_FAILURES:
            self.failures_shown += 1
            self.console.print(f"[red]✗ {shown(node)}[/]: {shown(message)}", soft_wrap=True)
            if self.failures_shown == _SHOWN_FAILURES:
                self.console.print("[dim]  further failures are counted, not shown (see failures.jsonl)[/]")

    def _on_run_finished(self, data: dict[str, Any]) -> None:
        self.stop()
        if not self.summary:
            return
        counts = data.get("counts") or {}
        status = data.get("status", "?")
        style = "green" if status == "completed" else "red"
        self.console.print(
            f"[{style}]{shown(str(status))}[/]: {counts.get('records_in', 0):,} in, "
            f"{counts.get('records_out', 0):,} out, {counts.get('failures', 0):,} failed, "
            f"{counts.get('filtered', 0):,} filtered → {shown(str(data.get('output_dir', '')))}",
            soft_wrap=True,
        )


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
        if cache.get("sent") or cache.get("hits") or cache.get("deduped"):
            saved = cache.get("saved_tokens") or {}
            cost = meta.get("cost") or {}
            dollars = ""
            if cost.get("usd") is not None and (cost["usd"] or cost.get("saved_usd")):  # local engines: no $0
                dollars = f"; cost ${cost['usd']:,.4f}, saved ${cost.get('saved_usd') or 0:,.4f}"
            console.print(
                f"  requests: {cache.get('sent', 0):,} sent, {cache.get('hits', 0):,} from the ledger, "
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
