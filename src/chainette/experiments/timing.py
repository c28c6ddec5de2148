"""Per-case figures of an experiment: its timeline, duration, tokens and cost.

Every run an experiment makes (the chain's first turn, later turns, each judge) runs with
``record_trace=True``, so its :class:`~chainette.runtime.record_trace.RecordTrace` holds, by input
position, each node's spans and each step's tokens. :func:`case_figures` maps positions back to
cases and puts every run's spans on one clock: seconds from the start of the experiment's first
run (``timeline_started_at`` in ``experiment.json`` is that instant, UTC).

Records go through the chain each on their own: a node's span is noted for the one record it ran
over, so each case's timeline is its own (``chunk`` is 1; more only where a node still saw several
records at once, such as a stage of sync ``apply`` nodes).

A case's ``duration_s`` is from its first span's start to its last span's end in the chain's
runs (turns included, judges not); its tokens and cost include its judges' (``by_step`` tells
them apart). Cost is what was sent (``usd``) and what reused answers would have cost (``saved_usd``);
None where an engine has no known price.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..engines.registry import get_engine_config
from ..graph.nodes import Node
from ..ledger.costs import Price, cost_usd, price_for
from ..runtime.accounting import total_usd
from ..runtime.record_trace import RecordTrace

__all__ = ["TracedRun", "case_figures", "prices_of", "sum_figures", "wall_clock"]


@dataclass(frozen=True)
class TracedRun:
    """One run of the experiment: ``label`` (``run``, ``turn-2``, ``judge-<id>``), its trace, and
    which case each of its input positions was (``cases[position] = case index``)."""

    label: str
    trace: RecordTrace | None
    cases: list[int]
    judge: bool = False


def prices_of(nodes: Iterable[Node]) -> dict[str, Price | None]:
    """Step id → the price of its engine's tokens (None: unknown)."""
    out: dict[str, Price | None] = {}
    for node in nodes:
        if node.engine_name is not None:
            config = get_engine_config(node.engine_name)
            out[node.id] = price_for(node.engine_name, config.model, config.backend)
    return out


def case_figures(runs: list[TracedRun], count: int, prices: dict[str, Price | None]) -> list[dict[str, Any]]:
    """For each of ``count`` cases: ``duration_s``, ``tokens``, ``cost``, ``by_step``, ``timeline``."""
    origin = next((r.trace.started for r in runs if r.trace is not None), 0.0)
    out: list[dict[str, Any]] = [{"timeline": [], "by_step": {}, "_chain": []} for _ in range(count)]
    for run in runs:
        if run.trace is None:
            continue
        for position, case in enumerate(run.cases):
            figures = out[case]
            for span in run.trace.spans_of(position):
                entry = {
                    "node": span.node,
                    "run": run.label,
                    "start_s": round(span.start - origin, 6),
                    "end_s": round(span.end - origin, 6),
                    "chunk": span.size,
                }
                figures["timeline"].append(entry)
                if not run.judge:
                    figures["_chain"].append(entry)
            for step, usage in run.trace.usage.get(position, {}).items():
                row = figures["by_step"].setdefault(
                    step,
                    {"prompt": 0, "completion": 0, "saved_prompt": 0, "saved_completion": 0,
                     "requests": 0, "reused": 0},
                )  # fmt: skip
                for key in row:
                    row[key] += getattr(usage, key)
    for figures in out:
        chain = figures.pop("_chain")
        figures["duration_s"] = (
            round(max(e["end_s"] for e in chain) - min(e["start_s"] for e in chain), 6) if chain else None
        )
        for step, row in figures["by_step"].items():
            price = prices.get(step)
            row["usd"] = cost_usd(price, row["prompt"], row["completion"])
            row["saved_usd"] = cost_usd(price, row["saved_prompt"], row["saved_completion"])
        rows = list(figures["by_step"].values())
        figures["tokens"] = {
            key: sum(r[key] for r in rows)
            for key in ("prompt", "completion", "saved_prompt", "saved_completion")
        }
        figures["cost"] = {
            "usd": total_usd(r["usd"] for r in rows),
            "saved_usd": total_usd(r["saved_usd"] for r in rows),
        }
        figures["timeline"].sort(key=lambda e: (e["start_s"], e["end_s"]))
    return out


def wall_clock(runs: list[TracedRun]) -> str | None:
    """The instant the timelines count from, as ISO UTC (None: no run was traced)."""
    trace = next((r.trace for r in runs if r.trace is not None), None)
    return None if trace is None else _dt.datetime.fromtimestamp(trace.started_wall, tz=_dt.UTC).isoformat()


def sum_figures(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens, cost and cache figures of several runs' ``metadata.json`` added up (the first's
    ledger and mode): an experiment's totals count its turns and judges too."""
    first = metas[0] if metas else {}
    tokens = {
        k: sum(int((m.get("tokens") or {}).get(k) or 0) for m in metas) for k in ("prompt", "completion")
    }
    cost: dict[str, Any] = {
        "usd": total_usd((m.get("cost") or {}).get("usd") for m in metas),
        "saved_usd": total_usd((m.get("cost") or {}).get("saved_usd") for m in metas),
        "by_step": {},
    }
    for meta in metas:  # a step of several runs (every turn) adds up; a judge's step is its own
        for step, row in ((meta.get("cost") or {}).get("by_step") or {}).items():
            into = cost["by_step"].setdefault(step, {k: (v if k == "engine" else 0) for k, v in row.items()})
            for key, value in row.items():
                if key != "engine":
                    into[key] = None if value is None or into[key] is None else round(into[key] + value, 6)
    caches = [m.get("cache") or {} for m in metas]
    cache: dict[str, Any] = {
        "ledger": (first.get("cache") or {}).get("ledger"),
        "mode": (first.get("cache") or {}).get("mode"),
        **{k: sum(int(c.get(k) or 0) for c in caches) for k in ("sent", "hits", "deduped")},
        "saved_tokens": {
            k: sum(int((c.get("saved_tokens") or {}).get(k) or 0) for c in caches)
            for k in ("prompt", "completion")
        },
        "runs": len(metas),
    }
    return {"tokens": tokens, "cost": cost, "cache": cache}
