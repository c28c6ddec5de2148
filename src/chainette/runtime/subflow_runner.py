"""Running a :class:`~chainette.graph.subflow.Subflow`: the chain's nodes over the chunk, each
record with a history of its own (``{"input": value}``), and the chain's final output handed on
under the subflow's id."""

from __future__ import annotations

from pydantic import ValidationError

from .._errors import InvalidInputError
from ..graph.subflow import Subflow
from .context import RunContext
from .dispatch import run_sequence
from .records import Record, coerce, describe_validation, owner_id

__all__ = ["run_subflow"]


async def run_subflow(node: Subflow, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    by_id: dict[str, Record] = {}
    inner: list[Record] = []
    for record in chunk:
        try:
            value = coerce(node.input_model, record.value)
        except ValidationError as exc:
            name = node.input_model.__name__ if node.input_model else "?"
            ctx.fail(
                record,
                InvalidInputError(
                    f"Subflow {node.id!r}: the record does not fit {name}, the input of chain "
                    f"{node.chain.name!r}: {describe_validation(exc)}. Convert it with an apply(...) before "
                    "the subflow, or change the chain's first input model.",
                    node_id=node.id,
                    record_id=record.id,
                ),
            )
            continue
        by_id[record.id] = record
        inner.append(
            Record(
                record.id,
                record.index,
                value,
                {"input": value},
                record.origin,
                record.tags,
                record.tokens,
                record.deadline,
                record.budget,
            )
        )

    out: list[Record] = []
    for result in await run_sequence(node.items, inner, ctx) if inner else []:
        owner = by_id[owner_id(by_id, result.id) or result.id]
        if result.id == owner.id:
            record = owner
            record.value, record.tags, record.tokens = result.value, result.tags, result.tokens
        else:  # fanned out inside the chain: one record per output, like an apply's fan-out
            record = Record(
                result.id,
                result.index,
                result.value,
                dict(owner.history),
                owner.origin,
                result.tags,
                result.tokens,
                result.deadline,
                result.budget,
            )
        out.append(record.advance(node.key, result.value))
    stats.records_out += len(out)
    stats.done += len(inner)  # inputs that did not fit were counted as done by ctx.fail
    ctx.progress(node.id)
    return out
