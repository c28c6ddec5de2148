"""Parallel groups, branches and ``a | b`` sequences: forking a record into branches and joining.

A parallel group runs each branch over copies of the chunk concurrently, then joins: a record
continues when every joined branch produced exactly one output for it, carrying that output
under the join alias and everything the branch added to the history (its nodes' outputs by id,
inner aliases). A record a joined branch filtered out is dropped (it is counted as filtered
where it was filtered, not as a failure).
"""

from __future__ import annotations

from .._errors import RecordError
from ..graph.nodes import Branch, Parallel, Seq
from .context import RunContext
from .dispatch import run_concurrently, run_sequence
from .records import Record

__all__ = ["run_branch", "run_parallel", "run_seq"]


async def run_parallel(group: Parallel, chunk: list[Record], ctx: RunContext) -> list[Record]:
    group_failed = ctx.group_failed if ctx.group_failed is not None else set()  # one set per record id
    views = {b.name: ctx.for_branch(group_failed) for b in group.branches}
    results = await run_concurrently(
        {b.name: (b.steps, [r.fork() for r in chunk], views[b.name]) for b in group.branches}
    )

    joined = group.joined
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
        base, ok = record.tokens, True
        for branch in joined:
            outputs = by_origin[branch.name].get(record.id, [])
            if len(outputs) == 1:
                continue
            ok = False
            failed_inside = views[branch.name].failed_origins or set()
            if record.id in failed_inside or not outputs:
                break  # already in failures.jsonl (with the node and reason), or counted as filtered
            ctx.fail(
                record,
                RecordError(
                    f"Branch {branch.name!r} joined as {branch.join_alias!r} produced {len(outputs)} outputs "
                    "(fan-out) for this record; a joined branch must produce exactly one output per record.",
                    node_id=branch.join_alias or branch.name,
                    record_id=record.id,
                ),
            )
            break
        if not ok:
            continue
        for branch in joined:
            result = by_origin[branch.name][record.id][0]
            record.history.update(result.history)  # its nodes' outputs, inner aliases included
            record.tokens += result.tokens - base  # what the branch's requests cost (a loop's max_tokens)
            assert branch.join_alias is not None
            record.history[branch.join_alias] = result.value
        out.append(record)
    return out


async def run_branch(branch: Branch, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """A branch on its own is its nodes in sequence (in a group, :func:`run_parallel` forks first)."""
    return await run_sequence(branch.steps, chunk, ctx)


async def run_seq(seq: Seq, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """``a | b | c`` where one node is expected (a chain or branch splices it instead)."""
    return await run_sequence(seq.nodes, chunk, ctx)
