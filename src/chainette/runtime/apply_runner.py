"""Running an ``apply`` node over a chunk of records, in order.

A sync function runs on the event loop while it is cheap: chunks that take under
``INLINE_BUDGET_S`` stay inline, and the first chunk that takes longer moves that node to a
worker thread (one hop per chunk) for the rest of the run, so a slow function blocks the loop
at most once. Measured on 2 cores: a thread hop per chunk for a few-microsecond function cost
more than the function, because the loop and the thread hand the GIL back and forth.
Async functions are awaited in order.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from .._errors import ApplyError
from ..graph.nodes import Apply
from ..graph.view import RecordView
from .context import RunContext
from .records import Record, coerce, describe_validation, dump

__all__ = ["INLINE_BUDGET_S", "run_apply"]

INLINE_BUDGET_S = 0.005
"""A sync function whose chunk takes longer than this moves to a worker thread."""


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def run_apply(node: Apply, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    failed_before = stats.failed
    inputs: list[Any] = []
    ready: list[Record] = []
    in_model = _model_or_none(node.input_model)
    for record in chunk:
        value = record.value
        # Already an instance of the input model is the common case; it needs no validation.
        if in_model is None or not isinstance(value, in_model):
            value = _coerce(node, record, node.input_model, value, "input")
            if isinstance(value, ApplyError):
                ctx.fail(record, value)
                continue
        inputs.append(value)
        ready.append(record)
    views = [RecordView(r.id, r.index, r.history) for r in ready] if node.wants_record else None
    if node.is_async:
        results: list[Any] = []
        for k, value in enumerate(inputs):
            try:
                results.append(await (node.fn(value, views[k]) if views is not None else node.fn(value)))
            except Exception as exc:
                results.append(_Raised(exc))
    elif node.id in ctx.threaded:
        results = await anyio.to_thread.run_sync(_call_all, node.fn, inputs, views)
    else:
        started = time.perf_counter()
        results = _call_all(node.fn, inputs, views)
        if time.perf_counter() - started > INLINE_BUDGET_S:
            ctx.threaded.add(node.id)
    out: list[Record] = []
    out_model = _model_or_none(node.output_model)
    for record, result in zip(ready, results, strict=True):
        if out_model is not None and isinstance(result, out_model):
            # One output of the declared model: what _outputs does for it, without the detour.
            _write(node, record.advance(node.key, result), ctx)
            out.append(record)
        else:
            out.extend(_outputs(node, record, result, ctx))
    stats.records_out += len(out)
    stats.done += len(chunk) - (stats.failed - failed_before)
    ctx.progress(node.id)
    return out


def _model_or_none(model: Any) -> type[BaseModel] | None:
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _call_all(fn: Any, inputs: Sequence[Any], views: Sequence[RecordView] | None = None) -> list[Any]:
    results: list[Any] = []
    if views is not None:
        for value, view in zip(inputs, views, strict=True):
            try:
                results.append(fn(value, view))
            except Exception as exc:
                results.append(_Raised(exc))
        return results
    for value in inputs:
        try:
            results.append(fn(value))
        except Exception as exc:
            results.append(_Raised(exc))
    return results


def _outputs(node: Apply, record: Record, result: Any, ctx: RunContext) -> list[Record]:
    if isinstance(result, _Raised):
        exc = result.exc
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        ctx.fail(
            record,
            ApplyError(
                f"apply {node.id!r} raised {type(exc).__name__}: {exc}{where}",
                node_id=node.id,
                record_id=record.id,
            ),
        )
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
            value = _coerce(node, record, node.output_model, item, "output")
            if isinstance(value, ApplyError):
                ctx.fail(record, value)
                continue
            child = record.child(k, node.id, value)
            _write(node, child, ctx)
            children.append(child)
        return children
    value = _coerce(node, record, node.output_model, result, "output")
    if isinstance(value, ApplyError):
        ctx.fail(record, value)
        return []
    record.advance(node.key, value)
    _write(node, record, ctx)
    return [record]


def _write(node: Apply, record: Record, ctx: RunContext) -> None:
    if node.write:
        row = {"_id": record.id, **record.tags} if record.tags else {"_id": record.id}  # tags: a loop's pass
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
