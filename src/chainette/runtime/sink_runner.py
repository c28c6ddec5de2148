"""Running :class:`~chainette.graph.sink.Sink` (rows to its file, through the run writer) and
:class:`~chainette.graph.show.Show` (lines printed): both pass every record on unchanged, except
one whose chosen fields cannot be taken (a field it lacks, a projection that raised or, for a CSV
or Parquet sink, a row whose keys differ from the first row's), which fails here.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel

from .._errors import ApplyError, InvalidInputError, RecordError
from ..graph.fields import pick
from ..graph.show import Show
from ..graph.sink import Sink
from .context import RunContext
from .records import Record, dump

__all__ = ["SHOWN", "run_show", "run_sink"]

SHOWN = "show"
"""The event a :class:`Show` line goes out as (``node``, ``record``, ``text``) when a listener
displays them (``displays_shown = True``: the CLI's progress display prints it above its bars)."""


async def run_sink(node: Sink, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    out: list[Record] = []
    columns: list[str] | None = ctx.state.get(node.id)
    for record in chunk:
        row = _row(node, record)
        if not isinstance(row, RecordError) and node.format != "jsonl":
            if columns is None:
                columns = ctx.state[node.id] = list(row)
            elif list(row) != columns:
                row = ApplyError(
                    f"sink {node.id!r}: project made the columns {list(row)}, but {node.path!r} has the "
                    f"columns {columns} (from its first row): a {node.format} file has one set of columns; "
                    "return the same keys for every record (None where there is no value).",
                    node_id=node.id,
                    record_id=record.id,
                )
        if isinstance(row, RecordError):
            ctx.fail(record, row)
            continue
        ctx.writer.add(node.id, row)
        out.append(record)
    stats.records_out += len(out)
    stats.done += len(out)
    ctx.progress(node.id)
    return out


def _row(node: Sink, record: Record) -> dict[str, Any] | RecordError:
    value = record.value
    if node.project is not None:
        try:
            made = node.project(value)
        except Exception as exc:
            return ApplyError(
                f"sink {node.id!r}: project raised {type(exc).__name__}: {exc}",
                node_id=node.id,
                record_id=record.id,
            )
        made = dump(made) if isinstance(made, BaseModel) else made
        if not isinstance(made, dict):
            return ApplyError(
                f"sink {node.id!r}: project must return a dict or a model, got {type(made).__name__}.",
                node_id=node.id,
                record_id=record.id,
            )
        return made
    if node.fields is None:
        dumped = dump(value)
        return dumped if isinstance(dumped, dict) else {"value": dumped}
    return _picked(node, record)


def _picked(node: Sink, record: Record) -> dict[str, Any] | RecordError:
    assert node.fields is not None
    try:
        return {k: dump(v) for k, v in pick(record.value, node.fields).items()}
    except KeyError as exc:
        return InvalidInputError(
            f"{node.kind} {node.id!r}: the value has no field {exc.args[0]!r} (it is a "
            f"{type(record.value).__name__}); choose fields it has.",
            node_id=node.id,
            record_id=record.id,
        )


async def run_show(node: Show, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    seen, shown = ctx.state.get(node.id, (0, 0))
    displayed = getattr(ctx.on_event, "displays_shown", False)
    for record in chunk:
        seen += 1
        if (seen - 1) % node.every or (node.limit is not None and shown >= node.limit):
            continue
        shown += 1
        text = _line(node, record)
        if displayed:
            ctx.on_event(SHOWN, {"node": node.id, "record": record.id, "text": text})
        else:
            print(text, file=sys.stdout, flush=True)
    ctx.state[node.id] = (seen, shown)
    stats.records_out += len(chunk)
    stats.done += len(chunk)
    ctx.progress(node.id)
    return chunk


def _line(node: Show, record: Record) -> str:
    if node.fields is None:
        parts = [_cut(dump(record.value), node.width)]
    else:
        parts = []
        for column, field in node.fields.items():
            try:
                value = pick(record.value, {column: field})[column]
            except KeyError:
                parts.append(f"{column}=<no field {field!r}>")
                continue
            parts.append(f"{column}={_cut(dump(value), node.width)}")
    return f"[{node.id}] {record.id} " + " ".join(parts)


def _cut(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
