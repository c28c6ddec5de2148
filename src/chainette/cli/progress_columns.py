"""The columns of the live progress display, and the rate meter they read.

Each column renders one task (a node's row or a heading) from its fields, and
:class:`FooterProgress` adds the run's line under them; rich calls them on its own refresh
timer, so what they compute (a rate over the last seconds, an ETA) costs nothing per event.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task
from rich.table import Column
from rich.text import Text

__all__ = ["FooterProgress", "Meter", "eta_text", "live_text", "rate_text"]

Clock = Callable[[], float]


class Meter:
    """A count's rate over the last ``window`` seconds, from samples kept at most every
    ``every`` seconds (so a burst of events costs one sample)."""

    __slots__ = ("_clock", "_every", "_samples", "_window", "value")

    def __init__(self, clock: Clock = time.monotonic, window: float = 10.0, every: float = 0.25) -> None:
        self._clock = clock
        self._window = window
        self._every = every
        self._samples: deque[tuple[float, float]] = deque()
        self.value = 0.0

    def set(self, value: float) -> None:
        """The count is now ``value`` (a running total: done records, tokens)."""
        self.value = value
        now = self._clock()
        samples = self._samples
        if samples and now - samples[-1][0] < self._every and len(samples) > 1:
            samples[-1] = (samples[-1][0], value)  # within the sampling step: the newest one moves
            return
        samples.append((now, value))
        while len(samples) > 2 and now - samples[1][0] > self._window:
            samples.popleft()

    def rate(self) -> float | None:
        """Per second over the window, up to now (it falls while nothing moves); None before two
        samples a second apart (a first burst would read as thousands a second)."""
        samples = self._samples
        if len(samples) < 2:
            return None
        start, first = samples[0]
        elapsed = self._clock() - start
        return (self.value - first) / elapsed if elapsed >= 1.0 else None


def rate_text(rate: float | None, unit: str) -> str:
    if rate is None:
        return ""
    if rate >= 100:
        return f"{rate:,.0f} {unit}/s"
    return f"{rate:.1f} {unit}/s"


def eta_text(remaining: float | None, rate: float | None) -> str:
    """``eta 1:02:03`` from what is left and the rate; empty when either is unknown."""
    if remaining is None or not rate or rate <= 0:
        return ""
    seconds = max(0, round(remaining / rate))
    hours, rest = divmod(seconds, 3600)
    return f"eta {hours}:{rest // 60:02d}:{rest % 60:02d}"


def _is_row(task: Task) -> bool:
    return not task.fields.get("heading")


class FooterProgress(Progress):
    """rich's ``Progress`` with one line under the rows: the run as a whole, from ``footer()``
    at each redraw (empty: no line)."""

    def __init__(self, *columns: ProgressColumn, footer: Callable[[], str], **options: Any) -> None:
        self._footer = footer  # first: rich renders from its __init__
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        line = self._footer()
        if line:
            yield Text(line, style="bold", no_wrap=True, overflow="ellipsis")


class _Column(ProgressColumn):
    """A column that never wraps: a narrow terminal crops it."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))


class CountColumn(_Column):
    """``done/total``, or ``done`` while the total is unknown or was outgrown (fan-out)."""

    def render(self, task: Task) -> Text:
        if not _is_row(task):
            return Text("")
        done = int(task.completed)
        open_ended = task.total is None or task.fields.get("grown", False)
        text = f"{done:,}" if open_ended else f"{done:,}/{int(task.total or 0):,}"
        return Text(text, style="progress.download")


class FailedColumn(_Column):
    def render(self, task: Task) -> Text:
        failed = task.fields.get("failed", 0)
        return Text(f"{failed:,} failed", style="bold red") if failed else Text("")


class CachedColumn(_Column):
    """How many of a step's answers came from the ledger or a duplicate in flight."""

    def render(self, task: Task) -> Text:
        cached = task.fields.get("cached", 0)
        return Text(f"{cached:,} cached", style="dim cyan") if cached else Text("")


class DetailColumn(_Column):
    """What a container reports beside its count (a loop's pass, a map's children)."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("detail") or ""), style="magenta")


class RateColumn(_Column):
    """Records per second (and tokens per second for a step) over the last seconds, and the ETA
    of a row with a known total."""

    def render(self, task: Task) -> Text:
        if not _is_row(task):
            return Text("")
        meter: Meter | None = task.fields.get("meter")
        if meter is None:
            return Text("")
        rate = meter.rate()
        parts = [rate_text(rate, "rec")]
        tokens: Meter | None = task.fields.get("tokens")
        if tokens is not None and tokens.value:
            parts.append(rate_text(tokens.rate(), "tok"))
        if task.total is not None and not task.fields.get("grown") and task.completed < task.total:
            parts.append(eta_text(task.total - task.completed, rate))
        return Text(" · ".join(p for p in parts if p), style="cyan")


class LiveColumn(_Column):
    """What is happening now: records in flight, retries (timeouts among them), re-asks, budget
    hits."""

    def render(self, task: Task) -> Text:
        if not _is_row(task):
            return Text("")
        return Text(live_text(task.fields), style="yellow")


def live_text(fields: dict[str, Any]) -> str:
    parts = []
    if fields.get("in_flight"):
        parts.append(f"{fields['in_flight']:,} in flight")
    retries, timeouts = fields.get("retries", 0), fields.get("timeouts", 0)
    if retries or timeouts:
        cut = f" ({timeouts:,} timed out)" if timeouts else ""
        parts.append(f"{retries:,} {'retry' if retries == 1 else 'retries'}{cut}")
    if fields.get("reasks"):
        parts.append(f"{fields['reasks']:,} re-ask{'s' if fields['reasks'] > 1 else ''}")
    if fields.get("budget"):
        parts.append(f"{fields['budget']:,} over budget")
    return " · ".join(parts)


class Bar(BarColumn):
    """A bar for the nodes of the main line only: a heading (a branch or route) has no count of
    its own, and a node inside a container sees a share of the records (a route) or more (a
    loop's passes), so its count stands alone."""

    def render(self, task: Task) -> Any:
        if not _is_row(task) or task.fields.get("nested"):
            return Text("")
        return super().render(task)
