"""Live progress of a run on stderr: one bar per node, driven by run events.

:class:`ProgressDisplay` and :class:`JsonEventLog` are middleware of the run's event stream
(``middleware(event)``, see ``runtime/events.py``), so they plug into ``Chain.run(progress=True)``
or ``middleware=[...]``; both also take the plain ``handler(kind, data)`` form of ``on_event=``.
Each event is one dict lookup and at most one ``Progress.update`` (or two, when a failure
upstream changes the totals below it); rates, ETAs and the run's line are worked out when rich
redraws, on its own timer, so thousands of events per second are cheap. The display reads the
default events only (``node_progress`` carries what entered a node, hence what is in flight;
``retry`` / ``timeout`` / ``reask`` / ``budget_exceeded`` are counted as they come), never the
per-record ``node_started`` / ``node_finished``: showing progress costs a run nothing per
record. When stderr is not a terminal, rich prints the final state once instead of animating.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress, TaskID, TextColumn

from ..engines.registry import get_engine_config
from ..ledger.costs import Price, cost_usd, price_for
from ..runtime.events import Event
from ._common import shown
from .progress_columns import (
    Bar,
    CachedColumn,
    CountColumn,
    DetailColumn,
    FailedColumn,
    FooterProgress,
    LiveColumn,
    Meter,
    RateColumn,
    eta_text,
    live_text,
    rate_text,
)
from .run_summary import JsonEventLog, print_run_summary

if TYPE_CHECKING:
    from ..graph.chain import ChainGraph

__all__ = ["JsonEventLog", "ProgressDisplay", "print_run_summary", "structure"]

_SHOWN_FAILURES = 3
"""How many record failures are printed in full before only the counts go on."""


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


@dataclass
class _Node:
    """What the display knows of one node (rich reads its meters at each redraw)."""

    meter: Meter
    tokens: Meter
    price: Price | None = None
    prompt: int = 0
    completion: int = 0
    lost: int = 0
    """Records that failed here and went no further (``on_failure="emit"`` ones go on)."""
    filtered: int = 0
    in_flight: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    """``retries``, ``timeouts``, ``reasks``, ``budget``: from their events."""
    loop_pass: str | None = None


_COUNTED = {"retry": "retries", "timeout": "timeouts", "reask": "reasks", "budget_exceeded": "budget"}


class ProgressDisplay:
    """A live view of a run: a bar per node with records done of those still coming (the input
    total less what failed or was filtered upstream), failures, answers reused, the rate and
    ETA, records in flight, retries, timeouts and re-asks as they happen, a loop's pass; and a
    footer for the run: records and tokens per second, ETA, in flight and the cost so far where
    the engines are priced (``ledger/costs.py``).

    Args:
        chain: The chain being run; its nodes get a bar each, in definition order.
        total: Number of input records, when known (each bar then shows ``done/total``).
        console: Where to draw (default: a console on stderr).
        summary: Print a one-line outcome when the run finishes.
        clock: Where rates and the run's time are read from (``time.monotonic``; tests pass
            their own).

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.total = total
        self.summary = summary
        self.rows = structure(chain) if chain is not None else []
        self.node_ids = [key for key, _, _ in self.rows if key is not None]
        self.failures_shown = 0
        self.engine_errors: list[str] = []
        """Why engines stopped (``engine_failed``): shown once, not again with each record."""
        self._clock = clock
        self._engines = {n.id: n.engine_name for n in chain.iter_nodes()} if chain is not None else {}
        self._nodes: dict[str, _Node] = {}
        self._input_lost = 0
        self._totals_stale = False
        self._shown_total: dict[str, int] = {}
        """The total each main-line row shows now."""
        self._grown: set[str] = set()
        """Rows whose count outgrew their total (a fan-out): shown as a count alone."""
        self._started = clock()
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
            "loop_pass": self._on_loop_pass,
            "run_finished": self._on_run_finished,
            "show": self._on_show,  # a Show node's line, printed above the bars
        }
        for kind in _COUNTED:
            self._handlers[kind] = self._on_counted(kind)

    displays_shown = True
    """It prints a ``Show`` node's lines (``show`` events) above its bars, so they do not break them."""

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
        self._progress = FooterProgress(
            TextColumn("{task.description}"),
            Bar(bar_width=30),
            CountColumn(),
            DetailColumn(),
            FailedColumn(),
            CachedColumn(),
            RateColumn(),
            LiveColumn(),
            console=self.console,
            footer=self.footer,
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

    def _node(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(Meter(self._clock), Meter(self._clock), self._price(node_id))
        return node

    def _price(self, node_id: str) -> Price | None:
        engine = self._engines.get(node_id)
        if engine is None:
            return None
        try:
            config = get_engine_config(engine)
        except Exception:  # an engine the display cannot look up: no price, the run goes on
            return None
        return price_for(engine, config.model, config.backend)

    def _task(self, node_id: str, label: str | None = None, depth: int | None = None) -> TaskID:
        task = self._tasks.get(node_id)
        if task is None:
            assert self._progress is not None
            depth = self._depth.get(node_id, 0) if depth is None else depth
            text = f"[bold]{shown(('  ' * depth + (label or node_id)).ljust(self._width))}[/]"
            # inside a container a node sees a share of the records (a route) or more (a loop):
            # its count stands alone, without the input total
            total = self.total if depth == 0 else None
            if total is not None:
                self._shown_total[node_id] = total
            node = self._node(node_id)
            task = self._tasks[node_id] = self._progress.add_task(
                text,
                total=total,
                failed=0,
                cached=0,
                nested=depth > 0,
                meter=node.meter,
                tokens=node.tokens,
            )
        return task

    def _main_line(self) -> list[str]:
        return [key for key, depth, _ in self.rows if key is not None and depth == 0]

    def _net_totals(self) -> dict[str, int]:
        """Each main-line node's total: the input less what failed or was filtered before it."""
        if self.total is None:
            return {}
        totals: dict[str, int] = {}
        left = self.total - self._input_lost
        for key in self._main_line():
            totals[key] = max(left, 0)
            node = self._nodes.get(key)
            if node is not None:
                left -= node.lost + node.filtered
        return totals

    def _refresh_totals(self) -> None:
        self._totals_stale = False
        assert self._progress is not None
        for key, total in self._net_totals().items():
            if key not in self._grown and self._shown_total.get(key) != total:
                self._shown_total[key] = total
                self._progress.update(self._task(key), total=total)

    def footer(self) -> str:
        """The run as a whole: records (out of the last main-line node) and tokens per second,
        ETA; and records in flight, retries / timeouts / re-asks, the cost so far where priced."""
        main = self._main_line()
        last = self._nodes.get(main[-1]) if main else None
        nodes = tuple(self._nodes.values())  # called from rich's refresh thread: a snapshot
        parts: list[str] = []
        rate = last.meter.rate() if last is not None else None
        if rate is not None:
            parts.append(rate_text(rate, "rec"))
        token_rates = [r for r in (n.tokens.rate() for n in nodes if n.tokens.value) if r]
        if token_rates:
            parts.append(rate_text(sum(token_rates), "tok"))
        total = self._net_totals().get(main[-1]) if main else None
        if last is not None and total is not None and last.meter.value < total:
            parts.append(eta_text(total - last.meter.value, rate))
        counts: dict[str, int] = {
            "in_flight": sum(self._nodes[k].in_flight for k in main if k in self._nodes)
        }
        for node in nodes:
            for key, count in tuple(node.counters.items()):
                counts[key] = counts.get(key, 0) + count
        live = [live_text(counts)]
        priced = [n for n in nodes if n.price is not None and (n.prompt or n.completion)]
        usd = sum(cost_usd(n.price, n.prompt, n.completion) or 0.0 for n in priced)
        if usd:
            live.append(f"${usd:,.4f} so far")
        return " · ".join(
            p for p in [f"run {_clock_text(self._clock() - self._started)}", *parts, *live] if p
        )

    def _on_run_started(self, data: dict[str, Any]) -> None:
        self._started = self._clock()
        self.console.print(
            f"[bold]Running[/] {shown(str(data.get('chain', '')))} [dim]→ {shown(str(data.get('output_dir', '')))}[/]",
            soft_wrap=True,
        )
        self.start(list(data.get("nodes") or []))

    def _on_node_progress(self, data: dict[str, Any]) -> None:
        if self._progress is None:
            return
        done = data.get("done", 0)
        node_id = data["node"]
        node = self._node(node_id)
        task = self._task(node_id)
        node.meter.set(done)
        node.in_flight = max(0, data.get("in", done) - done)
        if node.filtered != data.get("filtered", 0):
            node.filtered = data.get("filtered", 0)
            self._totals_stale = True
        if "prompt_tokens" in data:
            node.prompt, node.completion = data["prompt_tokens"], data["completion_tokens"]
            node.tokens.set(node.prompt + node.completion)
        if self._totals_stale:
            self._refresh_totals()
        detail = data.get("detail") or node.loop_pass
        task_total = self._shown_total.get(node_id)
        if node_id in self._grown or (task_total is not None and done > task_total):
            self._grown.add(node_id)
            # Fan-out produced more records than came in: show the count alone, not 130%.
            self._progress.update(
                task,
                total=done,
                completed=done,
                failed=data.get("failed", 0),
                cached=data.get("cached", 0),
                in_flight=node.in_flight,
                grown=True,
            )
        else:
            self._progress.update(
                task,
                completed=done,
                failed=data.get("failed", 0),
                cached=data.get("cached", 0),
                in_flight=node.in_flight,
                detail=detail,
            )

    def _on_counted(self, kind: str) -> Callable[[dict[str, Any]], None]:
        key = _COUNTED[kind]

        def handler(data: dict[str, Any]) -> None:
            node = self._node(str(data.get("node", "")))
            node.counters[key] = count = node.counters.get(key, 0) + 1
            if self._progress is not None and data.get("node") in self._depth:
                fields: dict[str, Any] = {key: count}
                self._progress.update(self._task(data["node"]), **fields)

        return handler

    def _on_loop_pass(self, data: dict[str, Any]) -> None:
        node_id = str(data.get("node", ""))
        node = self._node(node_id)
        node.loop_pass = f"pass {int(data.get('iteration', 0)) + 1}: {int(data.get('records', 0)):,} looping"
        if self._progress is not None and node_id in self._depth:
            self._progress.update(self._task(node_id), detail=node.loop_pass)

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

    def _on_show(self, data: dict[str, Any]) -> None:
        self.console.print(shown(str(data.get("text", ""))), soft_wrap=True, markup=False, highlight=False)

    def _on_record_failed(self, data: dict[str, Any]) -> None:
        node = str(data.get("node", ""))
        if not data.get("emitted"):  # it goes no further: later nodes expect one record fewer
            if node == "input":
                self._input_lost += 1
            else:
                self._node(node).lost += 1
            self._totals_stale = True
        message = str(data.get("message", ""))
        if any(reason in message for reason in self.engine_errors):
            return  # the engine's failure was shown once; its records are counted in the bars
        if self.failures_shown < _SHOWN_FAILURES:
            self.failures_shown += 1
            self.console.print(f"[red]✗ {shown(node)}[/]: {shown(message)}", soft_wrap=True)
            if self.failures_shown == _SHOWN_FAILURES:
                self.console.print("[dim]  further failures are counted, not shown (see failures.jsonl)[/]")

    def _on_run_finished(self, data: dict[str, Any]) -> None:
        if self._progress is not None and self._totals_stale:
            self._refresh_totals()
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


def _clock_text(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
