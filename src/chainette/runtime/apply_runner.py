"""Running an ``apply`` node over a chunk of records, in order.

A sync function runs on the event loop while it is cheap: chunks that take under
``INLINE_BUDGET_S`` stay inline, and the first chunk that takes longer by its own work (CPU time)
moves that node to a worker thread (one hop per chunk) for the rest of the run; a chunk slow by
the clock only (a blocking call, or a busy machine that preempted the loop) moves it at the
second in a row. So a slow function blocks the loop at most twice, and one preemption on a loaded
machine no longer sends a cheap node through a thread hop per chunk for the rest of the run. Measured on 2 cores: a thread hop per chunk for a few-microsecond function cost
more than the function, because the loop and the thread hand the GIL back and forth.
Async functions are awaited in order. Consecutive inline nodes (each under budget on its last
chunk run alone) run in one pass per record, each record goes through all of
them before the next, with the same outputs, rows, failures and counts (``apply_fused.py``).

With a :class:`~chainette.graph.policy.NodePolicy` that sets ``timeout_s`` or ``retries``, each
record's call goes through :func:`call_with_policy`: bounded by ``anyio.fail_after`` (a sync
function in a worker thread, abandoned when it runs over), retried after the policy's backoff.
The calls stay one at a time, in order; the waits of a chunk's records overlap, so a chunk
whose records all fail once waits one backoff, not one per record. ``validate`` chooses whether
values are fitted into the input and output models. A record past its deadline or token budget
(``Record.deadline`` / ``budget``) fails before its call. Where a served trace listens
(``ctx.on_chunk``), each call is bound to the record's emitter, so ``emit_chunk`` inside the
function reaches the trace (``runtime/chunks.py``); otherwise nothing is bound.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Sequence
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from .._errors import ApplyError, RecordError
from ..engines.secrets import scrub_text
from ..graph.nodes import Apply
from ..graph.policy import NodePolicy
from ..graph.view import RecordView
from .budgets import exceeded
from .chunks import ChunkEmitter, bound
from .context import RunContext
from .records import Record, coerce, describe_validation, dump, node_row

__all__ = ["INLINE_BUDGET_S", "run_apply"]

INLINE_BUDGET_S = 0.005
"""A sync function whose chunk takes longer than this moves to a worker thread."""


class _Raised:
    __slots__ = ("attempts", "exc", "timeout_s")

    def __init__(self, exc: BaseException, attempts: int = 1, timeout_s: float | None = None) -> None:
        self.exc = exc
        self.attempts = attempts
        self.timeout_s = timeout_s
        """Set when the last try ran past the policy's ``timeout_s``."""


async def run_apply(node: Apply, chunk: list[Record], ctx: RunContext) -> list[Record]:
    if ctx.on_chunk is None and _inline(node, ctx):
        return _run_one(node, chunk, ctx)
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    failed_before = stats.failed
    inputs: list[Any] = []
    ready: list[Record] = []
    policy = node.policy
    declared_in = node.input_model if policy is None or policy.validates_input else None
    in_model = _model_or_none(declared_in)
    for record in chunk:
        if record.limited:  # a deadline or a token budget: checked before the call
            over = exceeded(record, node.id, f"apply {node.id!r}", ctx.record_deadline_s)
            if over is not None:
                ctx.fail(record, over)
                continue
        value = record.value
        # Already an instance of the input model is the common case; it needs no validation.
        if in_model is None or not isinstance(value, in_model):
            value = _coerce(node, record, declared_in, value, "input")
            if isinstance(value, ApplyError):
                ctx.fail(record, value)
                continue
        inputs.append(value)
        ready.append(record)
    views = [RecordView(r.id, r.index, r.history) for r in ready] if node.wants_record else None
    fns: list[Any] | None = None  # each record's call bound to its chunk emitter (a trace listens)
    if ctx.on_chunk is not None:
        fns = [bound(node.fn, ChunkEmitter(ctx.on_chunk, node.id, r.id), node.is_async) for r in ready]
    results: list[Any]
    if policy is not None and (policy.timeout_s is not None or policy.retries):
        results = await call_with_policy(node, policy, ready, inputs, views, ctx, fns)
    elif node.is_async:
        results = []
        for k, value in enumerate(inputs):
            fn = node.fn if fns is None else fns[k]
            try:
                results.append(await (fn(value, views[k]) if views is not None else fn(value)))
            except Exception as exc:
                results.append(_Raised(exc))
    elif node.id in ctx.threaded:
        results = await anyio.to_thread.run_sync(_call_all, fns or node.fn, inputs, views)
    else:
        started, cpu = time.perf_counter(), time.thread_time()
        results = _call_all(fns or node.fn, inputs, views)
        _timed(node, ctx, started, cpu)
    out: list[Record] = []
    declared_out = node.output_model if policy is None or policy.validates_output else None
    out_model = _model_or_none(declared_out)
    for record, result in zip(ready, results, strict=True):
        if out_model is not None and isinstance(result, out_model):
            # One output of the declared model: what _outputs does for it, without the detour.
            _write(node, record.advance(node.key, result), ctx)
            out.append(record)
        else:
            out.extend(_outputs(node, record, result, ctx, declared_out))
    stats.records_out += len(out)
    stats.done += len(chunk) - (stats.failed - failed_before)
    ctx.progress(node.id)
    return out


def _run_inline(
    node: Apply, chunk: list[Record], ctx: RunContext, in_model: type[BaseModel] | None
) -> list[Record]:
    """The usual case in one pass per record: a sync function on the loop, no policy, no record
    view, nobody listening for chunks (what the general path does, without its three lists)."""
    plan = [plan_of(node, in_model)]
    change = [0]
    out: list[Record] = []
    started, cpu = time.perf_counter(), time.thread_time()
    for record in chunk:
        through(plan, change, out, ctx, record, 0)
    _timed(node, ctx, started, cpu)
    return out


Plan = tuple[Apply, Any, str, bool, Any, type[BaseModel] | None, type[BaseModel] | None]
"""What :func:`through` needs of an inline node: the node, its function, key, write flag,
declared input model, and its input and output models as classes (or None)."""


def plan_of(node: Apply, in_model: type[BaseModel] | None = None) -> Plan:
    """``node`` as :func:`through` runs it (``in_model``: its input model's class, if known)."""
    if in_model is None:
        in_model = _model_or_none(node.input_model)
    return (
        node,
        node.fn,
        node.key,
        node.write,
        node.input_model,
        in_model,
        _model_or_none(node.output_model),
    )


def through(
    plan: list[Plan],
    change: list[int],
    out: list[Record],
    ctx: RunContext,
    record: Record,
    j: int,
) -> None:
    """``record`` through the inline nodes ``plan[j:]``, one after the other: limits checked,
    input coerced, the function called, the output written; each record dropped or fanned out at
    a node counted in ``change``; what comes out of the last goes in ``out``. A module function,
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
            through(plan, change, out, ctx, child, j + 1)
        return
    out.append(record)


def _inline(node: Any, ctx: RunContext) -> bool:
    """Whether ``node`` is an ``apply`` that :func:`_run_inline` runs (a sync function on the loop,
    no policy, no record view, nobody listening for chunks)."""
    return (
        isinstance(node, Apply)
        and node.policy is None
        and not node.is_async
        and not node.wants_record
        and node.id not in ctx.threaded
    )


def _run_one(node: Apply, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """What :func:`run_apply` does for an inline node, without the coroutine."""
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    failed_before = stats.failed
    went = _run_inline(node, chunk, ctx, _model_or_none(node.input_model))
    stats.records_out += len(went)
    stats.done += len(chunk) - (stats.failed - failed_before)
    ctx.progress(node.id)
    return went


def _timed(node: Apply, ctx: RunContext, started: float, cpu: float) -> None:
    """Move the node to a worker thread when its chunk held the loop past ``INLINE_BUDGET_S``:
    at once when that time was the loop's own work (CPU), else at the second such chunk in a row
    (a blocking call, or a busy machine that took the CPU away mid-chunk once)."""
    if time.perf_counter() - started <= INLINE_BUDGET_S:
        ctx.slow_once.discard(node.id)
        ctx.cheap.add(node.id)
        return
    ctx.cheap.discard(node.id)
    if time.thread_time() - cpu > INLINE_BUDGET_S / 2 or node.id in ctx.slow_once:
        ctx.threaded.add(node.id)
    else:
        ctx.slow_once.add(node.id)


def _model_or_none(model: Any) -> type[BaseModel] | None:
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _call_all(fn: Any, inputs: Sequence[Any], views: Sequence[RecordView] | None = None) -> list[Any]:
    """``fn`` over ``inputs`` (``fn``: one function, or a list of one per input)."""
    results: list[Any] = []
    fns = fn if isinstance(fn, list) else None
    if views is not None:
        for k, (value, view) in enumerate(zip(inputs, views, strict=True)):
            try:
                results.append((fn if fns is None else fns[k])(value, view))
            except Exception as exc:
                results.append(_Raised(exc))
        return results
    for k, value in enumerate(inputs):
        try:
            results.append((fn if fns is None else fns[k])(value))
        except Exception as exc:
            results.append(_Raised(exc))
    return results


def _outputs(
    node: Apply, record: Record, result: Any, ctx: RunContext, model: type[BaseModel] | None
) -> list[Record]:
    if isinstance(result, _Raised):
        ctx.fail(record, _raised_error(node, record, result))
        return []
    if isinstance(result, _Over):
        ctx.fail(record, result.error)
        return []
    if result is None:
        ctx.node(node.id).filtered += 1
        return []
    if isinstance(result, (list, tuple)):
        if not result:
            ctx.node(node.id).filtered += 1
            return []
        children = []
        for k, item in enumerate(result):
            value = _coerce(node, record, model, item, "output")
            if isinstance(value, ApplyError):
                ctx.fail(record, value)
                continue
            child = record.child(k, node.id, value)
            _write(node, child, ctx)
            children.append(child)
        return children
    value = _coerce(node, record, model, result, "output")
    if isinstance(value, ApplyError):
        ctx.fail(record, value)
        return []
    record.advance(node.key, value)
    _write(node, record, ctx)
    return [record]


def _write(node: Apply, record: Record, ctx: RunContext) -> None:
    if node.write:
        row = node_row(record)  # tags: a loop's pass
        row.update(_as_row(record.value))
        ctx.writer.add(node.id, row)


def _as_row(value: Any) -> dict[str, Any]:
    dumped = dump(value)
    return dumped if isinstance(dumped, dict) else {"value": dumped}


def _coerce(node: Apply, record: Record, model: type[BaseModel] | None, value: Any, what: str) -> Any:
    """``value`` as an instance of ``model`` (when declared), or an ApplyError saying why not."""
    try:
        return coerce(model, value)
    except ValidationError as exc:
        return ApplyError(
            f"apply {node.id!r}: {what} does not fit {model.__name__ if model else '?'} "
            f"({describe_validation(exc)}).",
            node_id=node.id,
            record_id=record.id,
        )


def _problem(raised: _Raised) -> str:
    """What went wrong in one call: its timeout, or the exception and where it was raised."""
    exc = raised.exc
    if raised.timeout_s is not None:
        return f"timed out after {raised.timeout_s:g} s"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"raised {type(exc).__name__}: {exc}{where}"


def _raised_error(node: Apply, record: Record, raised: _Raised) -> ApplyError:
    exc = raised.exc
    problem = _problem(raised)
    if raised.attempts > 1:
        message = f"apply {node.id!r} failed after {raised.attempts} attempts; the last one {problem}"
    else:
        message = f"apply {node.id!r} {problem}"
    error = ApplyError(message, node_id=node.id, record_id=record.id, attempts=raised.attempts)
    error.__cause__ = exc
    return error


async def call_with_policy(
    node: Apply,
    policy: NodePolicy,
    records: Sequence[Record],
    inputs: Sequence[Any],
    views: Sequence[RecordView] | None,
    ctx: RunContext,
    fns: Sequence[Any] | None = None,
) -> list[Any]:
    """Each record's result (or :class:`_Raised`) under ``policy``: in rounds, one try per
    record still failing per round, each waiting out its own backoff (so the waits overlap)."""
    results: list[Any] = [None] * len(records)
    ready_at = [0.0] * len(records)
    pending = list(range(len(records)))
    for attempt in range(1, policy.tries + 1):
        failed: list[int] = []
        for k in pending:
            record = records[k]
            wait = ready_at[k] - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            if attempt > 1 and record.limited:  # a retry is a new call: the record's limits hold
                over = exceeded(record, node.id, f"apply {node.id!r}", ctx.record_deadline_s)
                if over is not None:
                    over.attempts = attempt - 1
                    results[k] = _Over(over)
                    continue
            view = views[k] if views is not None else None
            fn = node.fn if fns is None else fns[k]
            result = await _try(node, fn, policy.timeout_s, inputs[k], view, ctx)
            if isinstance(result, _Raised):
                result.attempts = attempt
                if attempt < policy.tries:
                    failed.append(k)
                    delay = policy.backoff.delay(attempt, f"{node.id}/{record.id}")
                    ready_at[k] = time.monotonic() + delay
                    ctx.node(node.id).retries += 1  # counted as a step counts its retries
                    ctx.tell(
                        "retry",
                        record,
                        node.id,
                        attempt=attempt,
                        error=scrub_text(_problem(result)),
                        delay_s=delay,
                    )
            results[k] = result
        pending = failed
        if not pending:
            break
    return results


class _Over:
    """A record that ran out of its deadline or budget between two tries (failed as such)."""

    __slots__ = ("error",)

    def __init__(self, error: RecordError) -> None:
        self.error = error


async def _try(
    node: Apply, fn: Any, timeout_s: float | None, value: Any, view: RecordView | None, ctx: RunContext
) -> Any:
    """One call of ``fn`` (the node's function), bounded by ``timeout_s``; its result or :class:`_Raised`."""
    call = functools.partial(fn, value, view) if view is not None else functools.partial(fn, value)
    try:
        if timeout_s is None:
            if node.is_async:
                return await call()
            if node.id in ctx.threaded:
                return await anyio.to_thread.run_sync(call)
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return call()
            finally:
                _timed(node, ctx, started, cpu)
        with anyio.fail_after(timeout_s) as scope:
            if node.is_async:
                return await call()
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    except TimeoutError as exc:
        if timeout_s is not None and scope.cancelled_caught:
            return _Raised(exc, timeout_s=timeout_s)
        return _Raised(exc)
    except Exception as exc:
        return _Raised(exc)
