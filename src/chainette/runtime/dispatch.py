"""One function per kind of chain item: ``run_item(item, chunk, ctx) -> outputs``.

A branch group runs each branch over copies of the chunk concurrently, then joins: a record
continues when every joined branch produced exactly one output for it, carrying that output
under the join alias and the branch's step outputs under their ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .._errors import RecordError
from ..graph.nodes import Apply, Branch, Node, Step
from .apply_runner import run_apply
from .context import RunContext
from .records import Record
from .step_runner import run_step

__all__ = ["run_item"]

_RUNNERS: dict[type[Node], Callable[[Any, list[Record], RunContext], Awaitable[list[Record]]]] = {
    Step: run_step,
    Apply: run_apply,
}


async def run_item(item: Node | list[Branch], chunk: list[Record], ctx: RunContext) -> list[Record]:
    """Run one chain item (a node or a branch group) over ``chunk``."""
    if isinstance(item, list):
        return await run_group(item, chunk, ctx)
    return await _RUNNERS[type(item)](item, chunk, ctx)


async def run_group(branches: list[Branch], chunk: list[Record], ctx: RunContext) -> list[Record]:
    results: dict[str, list[Record]] = {}
    views: dict[str, RunContext] = {}
    group_failed: set[str] = set()

    async def run_branch(branch: Branch) -> None:
        view = views[branch.name] = ctx.for_branch(group_failed)
        records = [r.fork() for r in chunk]
        for node in branch.steps:
            if not records:
                break
            records = await _RUNNERS[type(node)](node, records, view)
        results[branch.name] = records

    async with anyio.create_task_group() as tg:
        for branch in branches:
            tg.start_soon(run_branch, branch)

    joined = [b for b in branches if b.join_alias is not None]
    if not joined:
        return chunk
    by_origin: dict[str, dict[str, list[Record]]] = {}
    for branch in joined:
        grouped: dict[str, list[Record]] = {}
        for rec in results[branch.name]:
            grouped.setdefault(rec.origin or rec.id, []).append(rec)
        by_origin[branch.name] = grouped

    out: list[Record] = []
    for record in chunk:
        ok = True
        for branch in joined:
            outputs = by_origin[branch.name].get(record.id, [])
            if len(outputs) == 1:
                continue
            ok = False
            failed_inside = views[branch.name].failed_origins or set()
            if record.id in failed_inside:
                break  # already in failures.jsonl, with the step and reason
            got = (
                "no output (an apply filtered it out)" if not outputs else f"{len(outputs)} outputs (fan-out)"
            )
            ctx.fail(
                record,
                RecordError(
                    f"Branch {branch.name!r} joined as {branch.join_alias!r} produced {got} for this record; "
                    "a joined branch must produce exactly one output per record.",
                    node_id=branch.join_alias or branch.name,
                    record_id=record.id,
                ),
            )
            break
        if not ok:
            continue
        for branch in joined:
            result = by_origin[branch.name][record.id][0]
            for node in branch.steps:
                if node.id in result.history:
                    record.history[node.id] = result.history[node.id]
            assert branch.join_alias is not None
            record.history[branch.join_alias] = result.value
        out.append(record)
    return out
