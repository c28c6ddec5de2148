"""Which runner runs which node kind: ``run_node(node, chunk, ctx) -> outputs``.

Every node kind has one runner, registered here by class (:func:`register_runner`); a subclass
of a registered kind (``class MyStep(Step)``) uses its base's runner. A kind that streams
(``node.streams``, e.g. a step with ``samples > 1``) also registers a ``stream`` function that
yields its outputs in passes. :func:`missing_runners` lists the nodes of a chain no runner
handles, so a run refuses them before any request.

This module imports no runner: the runners import it (a loop's body, a map's children, a
subflow's nodes run through :func:`run_sequence`), and the built-in kinds are registered by
``runtime/kinds.py``, which the executor imports. So nothing here knows the kinds, and the
runners and the registry never import each other in a loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ..graph.nodes import Node
from .context import RunContext
from .records import Record

__all__ = [
    "Later",
    "Runner",
    "missing_runners",
    "register_runner",
    "run_concurrently",
    "run_node",
    "run_sequence",
    "runner_for",
]

RunFn = Callable[[Any, list[Record], RunContext], Awaitable[list[Record]]]
StreamFn = Callable[[Any, list[Record], RunContext], AsyncIterator[list[Record]]]
FlushFn = Callable[[Any, RunContext], AsyncIterator[list[Record]]]
Later = tuple[Record, Callable[[], Awaitable[list[Record]]]]
"""A record a fast path did not settle, and what finishes it at that node (its outputs)."""
SettleFn = Callable[[Any, list[Record], RunContext], Awaitable[tuple[list[Record], list[Later]] | None]]


@dataclass(frozen=True)
class Runner:
    """How a node kind runs: ``run`` returns the records that go on (a failed record is handed to
    ``ctx.fail``, a filtered one counted: none is dropped silently); ``stream``, for kinds whose
    ``streams`` is true, yields them in passes; ``flush``, for whole-stream kinds, yields what
    they still hold once their input has ended; ``settle``, the fast path of a kind whose records
    may need no waiting (a step answered from the ledger), settles those of a chunk at once and
    returns the others with what finishes each (``runtime/stages.py`` runs those as their own
    tasks), or None where it does not apply."""

    run: RunFn
    stream: StreamFn | None = None
    flush: FlushFn | None = None
    settle: SettleFn | None = None


_RUNNERS: dict[type[Node], Runner] = {}


def register_runner(
    kind: type[Node],
    run: RunFn,
    stream: StreamFn | None = None,
    flush: FlushFn | None = None,
    settle: SettleFn | None = None,
) -> None:
    """Run nodes of class ``kind`` (and its subclasses, unless they register their own) with ``run``."""
    _RUNNERS[kind] = Runner(run, stream, flush, settle)


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
    """Run each named node sequence over its records, all at once; what comes out, by name.

    A sequence with no records gives none (no task); when only one has records, or every node
    of those that have runs inline on the loop (:func:`_never_waits`), they run one after the
    other on this task, which is what their tasks would do: a task each cost more than such a
    branch's work (a routed record takes one route of three; a parallel group of ``apply``
    branches)."""
    results: dict[str, list[Record]] = {name: [] for name, (_, records, _) in jobs.items() if not records}
    busy = {name: job for name, job in jobs.items() if job[1]}
    if len(busy) <= 1 or all(_never_waits(n, c) for nodes, _, c in busy.values() for n in nodes):
        for name, (nodes, records, ctx) in busy.items():
            results[name] = await run_sequence(nodes, records, ctx)
        return results

    async def one(name: str, nodes: Sequence[Node], records: list[Record], ctx: RunContext) -> None:
        results[name] = await run_sequence(nodes, records, ctx)

    async with anyio.create_task_group() as tg:
        for name, (nodes, records, ctx) in busy.items():
            tg.start_soon(one, name, nodes, records, ctx)
    return results


def _never_waits(node: Node, ctx: RunContext) -> bool:
    """A sync function run inline (not moved to a thread for being slow, no timeout or retry to
    wait on, no node observer): it returns without ever giving the loop a turn."""
    policy = node.policy
    return (
        node.fusable
        and node.id not in ctx.threaded
        and ctx.observe_nodes is None
        and (policy is None or (policy.timeout_s is None and not policy.retries))
    )
