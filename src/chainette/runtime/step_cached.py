"""A chunk's ledger answers settled together: the fast path of a step in a per-record stage.

Records move through a stage one by one (``runtime/stages.py``) so that none waits for a
sibling's request. A record whose answer the ledger holds waits for nothing at all, so it need
not travel alone: when a chunk reaches a step, :func:`settle_cached` renders its records, looks
their first requests up in one read and settles the answered ones (accepted, or failed for good)
right there, in the chunk, with no task and no suspension per record. The others come back as
one continuation each (``later``): the record's own attempts from where the chunk left them (a
miss: claimed and sent; a stored invalid answer: re-asked), which the stage runs as the record's
own task. Outcomes, rows, counters and events are those of :func:`step_runner.run_step`.

Used only where it cannot change what happens: the ledger is read (``cache="use"``), nobody
observes nodes record by record (traces, node events), and the step makes one answer per record.
"""

from __future__ import annotations

import functools

from .._errors import RenderError
from ..graph.nodes import Step
from .context import RunContext
from .dispatch import Later
from .records import Record
from .step_io import _Job, render_messages
from .step_outcome import _go_on
from .step_runner import _attempt, _finish_jobs

__all__ = ["settle_cached"]


async def settle_cached(
    step: Step, chunk: list[Record], ctx: RunContext
) -> tuple[list[Record], list[Later]] | None:
    """The records of ``chunk`` that go on, settled from the ledger in one read, and the rest as
    continuations; None (nothing done) where the fast path does not apply."""
    cache = ctx.cache
    if (
        step.samples != 1
        or cache.ledger is None
        or cache.mode != "use"
        or ctx.observe_nodes is not None
        or ctx.on_delta is not None
    ):
        return None
    stats = ctx.node(step.id)
    stats.records_in += len(chunk)
    jobs: list[_Job] = []
    for record in chunk:
        try:
            jobs.append(_Job(record, render_messages(step, record)))
        except RenderError as exc:
            ctx.fail(record, exc)
    if not jobs:
        ctx.progress(step.id)
        return [], []
    decided = await _attempt(step, jobs, ctx, True, ledger_only=True)
    if decided.stays:
        await cache.store_failures(decided.stays)
    waiting = {id(job) for job in decided.missed} | {id(job) for job in decided.retry}
    out = (
        _go_on(step, [job for job in jobs if id(job) not in waiting], ctx) if len(waiting) < len(jobs) else []
    )
    later: list[Later] = [
        (job.record, functools.partial(_finish_jobs, step, [job], ctx, first=True)) for job in decided.missed
    ]
    later += [
        (job.record, functools.partial(_finish_jobs, step, [job], ctx, first=False)) for job in decided.retry
    ]
    return out, later
