"""Consecutive sync ``apply`` nodes on the loop in one pass per record: each record goes through
all of them before the next starts, instead of each node going over the whole chunk in turn.

Only nodes that :func:`~chainette.runtime.apply_runner.run_apply` would run inline are fused (a
sync function, no policy, no record view, nobody listening for chunks, not moved to a worker
thread) and only while each was under ``INLINE_BUDGET_S`` on its last chunk run alone
(``ctx.cheap``): so a node's first chunk runs alone, timed, and a slow node is found and moved
to a thread as before, which ends the fused run. Nothing is fused when nodes are observed one by
one (``ctx.observe_nodes``). Measured (``benchmarks/overhead.py``, 3 nodes): about 0.7 us per
record of node overhead left beside 4.3 us of the functions' own work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import ApplyError
from . import apply_runner
from .apply_runner import (
    _coerce,
    _inline,
    _model_or_none,
    _outputs,
    _Raised,
    _write,
    run_apply,
)
from .budgets import exceeded
from .context import RunContext
from .records import Record

__all__ = ["fused_run", "run_fused"]


def fused_run(items: Sequence[Any], start: int, ctx: RunContext, runner: Callable[[Any], Any]) -> int:
    """The end of the run of :func:`run_fused`-able nodes from ``items[start]`` (``start``: none;
    a run is two nodes or more; ``runner(node)``: the function that runs ``node``, which must be
    :func:`run_apply`). A node moved to a worker thread ends the run; a run whose nodes are
    observed one by one (``ctx.observe_nodes``) or whose calls stream chunks fuses nothing."""
    if ctx.on_chunk is not None or ctx.observe_nodes is not None:
        return start
    end = start
    cheap = ctx.cheap
    while (
        end < len(items)
        and items[end].id in cheap
        and _inline(items[end], ctx)
        and runner(items[end]) is run_apply
    ):
        end += 1
    return end if end - start >= 2 else start


def run_fused(nodes: Sequence[Any], chunk: list[Record], ctx: RunContext) -> list[Record]:
    """Consecutive inline ``apply`` nodes in one pass per record: each record goes through all of
    them before the next starts. Outputs, rows, failures and counters are those of running the
    nodes one after the other (:func:`_run_inline`); only the interleaving of different nodes'
    rows within the chunk differs. Only nodes whose last chunk, timed on its own, was under
    ``INLINE_BUDGET_S`` are fused (``ctx.cheap``; so each node's first chunk runs alone); a fused
    pass over budget cannot say which node was slow, so its nodes run alone again, each timed
    (and moved to a worker thread as :func:`_timed` decides, which then ends the run)."""
    count = len(nodes)
    stats = [ctx.node(node.id) for node in nodes]
    failed_before = [s.failed for s in stats]
    change = [0] * count  # outputs minus inputs at each node (records dropped, or fanned out)
    plan = [
        (
            node,
            node.fn,
            node.key,
            node.write,
            node.input_model,
            _model_or_none(node.input_model),
            _model_or_none(node.output_model),
        )
        for node in nodes
    ]
    out: list[Record] = []
    started = time.perf_counter()
    for record in chunk:
        _through(plan, change, out, ctx, record, 0)
    if time.perf_counter() - started > apply_runner.INLINE_BUDGET_S:  # read here: tests change it
        ctx.cheap.difference_update(node.id for node in nodes)
    n_in = len(chunk)
    for node, s, before, delta in zip(nodes, stats, failed_before, change, strict=True):
        s.records_in += n_in
        s.records_out += n_in + delta
        s.done += n_in - (s.failed - before)
        n_in += delta
        ctx.progress(node.id)
    return out


def _through(
    plan: list[Any],
    change: list[int],
    out: list[Record],
    ctx: RunContext,
    record: Record,
    j: int,
) -> None:
    """``record`` through the fused nodes ``plan[j:]`` (what :func:`_run_inline` does at each),
    each record dropped or fanned out counted in ``change``; what comes out of the last goes in ``out``. A module function,
    not a closure: a closure calling itself is a reference cycle, which kept every chunk's records
    alive until the cyclic collector ran (5x the collections, 0.7 s per 200k records)."""
    count = len(plan)
    while j < count:
        node, fn, key, write, declared_in, in_model, out_model = plan[j]
        if record.deadline is not None or record.budget is not None:  # record.limited
            over = exceeded(record, node.id, f"apply {node.id!r}", ctx.record_deadline_s)
            if over is not None:
                ctx.fail(record, over)
                change[j] -= 1
                return
        value = record.value
        if in_model is None or not isinstance(value, in_model):
            value = _coerce(node, record, declared_in, value, "input")
            if isinstance(value, ApplyError):
                ctx.fail(record, value)
                change[j] -= 1
                return
        try:
            result = fn(value)
        except Exception as exc:
            result = _Raised(exc)
        if out_model is not None and isinstance(result, out_model):
            record.history[key] = result  # record.advance, inline
            record.value = result
            if write:
                _write(node, record, ctx)
            j += 1
            continue
        went = _outputs(node, record, result, ctx, node.output_model)
        change[j] += len(went) - 1
        for child in went:  # none (filtered, failed), one, or a fan-out's children
            _through(plan, change, out, ctx, child, j + 1)
        return
    out.append(record)
