"""What the local and the Ray executor share of a run's middle: the inputs read as chunks of
records (bad ones written to failures in place) and the error that stopped a run. Below both, so
neither imports the other for it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from .._errors import InputError, InvalidInputError
from ..graph.chain import ChainGraph
from ..io.inputs import InputItem, iter_input_chunks
from .context import RunContext
from .options import RunOptions
from .records import Record, coerce, input_mismatch, type_label

__all__ = ["first_error", "read_records"]

Chunk = list[Record]


async def read_records(
    chain: ChainGraph, inputs: Any, opts: RunOptions, ctx: RunContext, counts: dict[str, int]
) -> AsyncIterator[Chunk]:
    """The inputs as chunks of records (never empty); an input that cannot be read or does not fit
    the chain's input model is written to failures here (``node: input``) and counted in."""
    model = chain.input_type  # a model, a union of models, or None
    # a model class, and no per-record limits: records are made in one pass (``_to_record`` otherwise)
    plain = (
        model
        if isinstance(model, type)
        and issubclass(model, BaseModel)
        and opts.record_deadline_s is None
        and opts.record_token_budget is None
        else None
    )
    validate = plain.__pydantic_validator__.validate_python if plain is not None else None
    reader = iter_input_chunks(inputs, chain.batch_size, strict=opts.strict_inputs, columns=opts.columns)
    async with aclosing(reader):  # a head ``take`` stops early: the file is closed then
        async for items in reader:
            if ctx.input_stop[0]:  # a ``take`` at the head of the chain has all it needs
                break
            counts["records_in"] += len(items)
            if validate is not None and all(item.error is None for item in items):
                try:  # the usual chunk: every line read and of the input model, no limits to set
                    records = [
                        Record(item.id, item.index, value, {"input": value})
                        for item in items
                        for value in (validate(item.value, from_attributes=True),)
                    ]
                except ValidationError:  # one does not fit: each on its own, to say which
                    records = [
                        r for r in (_to_record(item, model, opts, ctx) for item in items) if r is not None
                    ]
            else:
                records = [r for r in (_to_record(item, model, opts, ctx) for item in items) if r is not None]
            if records:
                yield records


def _to_record(item: InputItem, model: Any, opts: RunOptions, ctx: RunContext) -> Record | None:
    if item.error is None:
        try:
            value = coerce(model, item.value)
            if opts.record_deadline_s is None and opts.record_token_budget is None:
                return Record(item.id, item.index, value, {"input": value})
            deadline = None if opts.record_deadline_s is None else time.monotonic() + opts.record_deadline_s
            return Record(
                item.id,
                item.index,
                value,
                {"input": value},
                deadline=deadline,
                budget=opts.record_token_budget,
            )
        except ValidationError as exc:
            item.error = (
                f"{item.where}: does not fit the chain's input model {type_label(model)} "
                f"({input_mismatch(model, exc)}). Fix the record or the input model."
            )
            if opts.strict_inputs:
                raise InputError(item.error) from exc
    record = Record(item.id, item.index, item.value, {})  # ``input``: the parsed value, when there is one
    ctx.fail(record, InvalidInputError(item.error or "", node_id="input", record_id=item.id, raw=item.raw))
    return None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped the run (the others are cancellations it caused)."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        elif not isinstance(exc, cancelled):
            leaves.append(exc)
    return leaves[0] if leaves else group
