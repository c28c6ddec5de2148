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

from . import apply_runner
from .apply_runner import _inline, plan_of, run_apply, through
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
    them before the next starts (``apply_runner.through``, the pass a lone inline node runs too).
    Outputs, rows, failures and counters are those of running the nodes one after the other; only
    the interleaving of different nodes' rows within the chunk differs. Only nodes whose last chunk, timed on its own, was under
    ``INLINE_BUDGET_S`` are fused (``ctx.cheap``; so each node's first chunk runs alone); a fused
    pass over budget cannot say which node was slow, so its nodes run alone again, each timed
    (and moved to a worker thread as :func:`_timed` decides, which then ends the run)."""
    count = len(nodes)
    stats = [ctx.node(node.id) for node in nodes]
    failed_before = [s.failed for s in stats]
    change = [0] * count  # outputs minus inputs at each node (records dropped, or fanned out)
    plan = [plan_of(node) for node in nodes]
    out: list[Record] = []
    started = time.perf_counter()
    for record in chunk:
        through(plan, change, out, ctx, record, 0)
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
