"""Which runner runs which node kind: ``run_node(node, chunk, ctx) -> outputs``.

Every node kind has one runner, registered here by class (:func:`register_runner`); a subclass
of a registered kind (``class MyStep(Step)``) uses its base's runner. A kind that streams
(``node.streams``, e.g. a step with ``samples > 1``) also registers a ``stream`` function that
yields its outputs in passes. :func:`missing_runners` lists the nodes of a chain no runner
handles, so a run refuses them before any request.

A parallel group runs each branch over copies of the chunk concurrently, then joins: a record
continues when every joined branch produced exactly one output for it, carrying that output
under the join alias and everything the branch added to the history (its nodes' outputs by id,
inner aliases). A record a joined branch
filtered out is dropped (it is counted as filtered where it was filtered, not as a failure).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .._errors import RecordError
from ..graph.dialogue import Dialogue
from ..graph.loop import Loop
from ..graph.map import Map
from ..graph.nodes import Apply, Branch, Node, Parallel, Seq, Step
from ..graph.router import Router
from ..graph.stream_ops import Shuffle, Take
from ..graph.subflow import Subflow
from .apply_runner import run_apply
from .context import RunContext
from .dialogue_runner import run_dialogue
from .loop_runner import run_loop
from .map_runner import run_map
from .records import Record
from .router_runner import run_router
from .step_runner import iter_step, run_step
from .stream_runner import flush_shuffle, run_shuffle, run_take
from .subflow_runner import run_subflow

__all__ = ["Runner", "missing_runners", "register_runner", "run_node", "runner_for"]

RunFn = Callable[[Any, list[Record], RunContext], Awaitable[list[Record]]]
StreamFn = Callable[[Any, list[Record], RunContext], AsyncIterator[list[Record]]]
FlushFn = Callable[[Any, RunContext], AsyncIterator[list[Record]]]


@dataclass(frozen=True)
class Runner:
    """How a node kind runs: ``run`` returns the records that go on (a failed record is handed to
    ``ctx.fail``, a filtered one counted: none is dropped silently); ``stream``, for kinds whose
    ``streams`` is true, yields them in passes; ``flush``, for whole-stream kinds, yields what
    they still hold once their input has ended."""

    run: RunFn
    stream: StreamFn | None = None
    flush: FlushFn | None = None


_RUNNERS: dict[type[Node], Runner] = {}


def register_runner(
    kind: type[Node], run: RunFn, stream: StreamFn | None = None, flush: FlushFn | None = None
) -> None:
    """Run nodes of class ``kind`` (and its subclasses, unless they register their own) with ``run``."""
    _RUNNERS[kind] = Runner(run, stream, flush)


def _lookup(node: Node) -> Runner | None:
    """The runner of the node's class or of its nearest registered base class."""
    return next((_RUNNERS[cls] for cls in type(node).__mro__ if cls in _RUNNERS), None)


def runner_for(node: Node) -> Runner:
    runner = _lookup(node)
    if runner is None:
        raise KeyError(type(node).__name__)
    return runner


def missing_runners(nodes: Iterable[Node]) -> list[str]:
    """Messages for the nodes no runner handles."""
    out = []
    for node in nodes:
        if _lookup(node) is None:
            known = ", ".join(sorted(k.__name__ for k in _RUNNERS))
            out.append(
                f"{node.kind} {node.id!r}: nothing runs nodes of class {type(node).__name__} (runners exist for "
                f"{known} and their subclasses). Subclass one of those, or register a runner with "
                "chainette.runtime.dispatch.register_runner."
            )
    return out


async def run_node(node: Node, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """Run ``node`` over ``chunk`` (all passes of a streaming node gathered), through the
    context's node observer when it has one."""
    run = runner_for(node).run
    if ctx.observe_nodes is None:
        return await run(node, chunk, ctx)
    return await ctx.observe_nodes(node, chunk, ctx, run)


async def run_sequence(nodes: Sequence[Node], chunk: list[Record], ctx: RunContext) -> list[Record]:
    for node in nodes:
        if not chunk:
            break
        chunk = await run_node(node, chunk, ctx)
    return chunk


async def run_concurrently(
    jobs: Mapping[str, tuple[Sequence[Node], list[Record], RunContext]],
) -> dict[str, list[Record]]:
    """Run each named node sequence over its records, all at once; what comes out, by name."""
    results: dict[str, list[Record]] = {}

    async def one(name: str, nodes: Sequence[Node], records: list[Record], ctx: RunContext) -> None:
        results[name] = await run_sequence(nodes, records, ctx)

    async with anyio.create_task_group() as tg:
        for name, (nodes, records, ctx) in jobs.items():
            tg.start_soon(one, name, nodes, records, ctx)
    return results


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


register_runner(Step, run_step, iter_step)
register_runner(Apply, run_apply)


async def run_branch(branch: Branch, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """A branch on its own is its nodes in sequence (in a group, :func:`run_parallel` forks first)."""
    return await run_sequence(branch.steps, chunk, ctx)


async def run_seq(seq: Seq, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """``a | b | c`` where one node is expected (a chain or branch splices it instead)."""
    return await run_sequence(seq.nodes, chunk, ctx)


register_runner(Branch, run_branch)
register_runner(Seq, run_seq)
register_runner(Parallel, run_parallel)
register_runner(Router, run_router)
register_runner(Take, run_take)
register_runner(Shuffle, run_shuffle, flush=flush_shuffle)
register_runner(Map, run_map)
register_runner(Dialogue, run_dialogue)
register_runner(Loop, run_loop)
register_runner(Subflow, run_subflow)
