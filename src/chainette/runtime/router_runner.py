"""Running a :class:`~chainette.graph.router.Router`: choose each record's route(s), run every
route over its records concurrently, and hand the outputs on in input order, each under the
router's id."""

from __future__ import annotations

from typing import Any

from .._errors import RecordError
from ..graph.router import Router
from ..graph.view import RecordView
from .context import RunContext
from .dispatch import run_concurrently
from .records import Record, owner_id

__all__ = ["run_router"]


async def run_router(node: Router, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    failed_here = 0  # counted locally: chunks run concurrently, and ctx.fail counts a failure as done
    groups: dict[str, list[Record]] = {name: [] for name in node.route_names}
    passed: list[Record] = []  # matched no route, and the router passes such records on unchanged
    order: dict[str, int] = {}
    for k, record in enumerate(chunk):
        failed = stats.failed
        names = _choose(node, record, ctx)
        failed_here += stats.failed - failed  # no await in between: only this record's failure
        if names is None:
            continue
        if not names:
            order[record.id] = k
            passed.append(record)
            continue
        for name in names:
            copy = record if len(names) == 1 else _copy(record, f"{record.id}.{name}")
            order[copy.id] = k
            groups[name].append(copy)

    done = await run_concurrently({r.name: (r.steps, groups[r.name], ctx) for r in node.routes})
    out = [r for route in node.routes for r in done[route.name]] + passed
    out.sort(key=lambda r: _position(order, r.id))  # input order (stable: route order within a record)
    for record in out:
        record.advance(node.key, record.value)
    stats.records_out += len(out)
    stats.done += len(chunk) - failed_here
    ctx.progress(node.id)
    return out


def _choose(node: Router, record: Record, ctx: RunContext) -> list[str] | None:
    """The routes ``record`` takes (none: it goes on unchanged), or None when it failed or was
    filtered (handled here)."""
    try:
        chosen = _chosen(node, record)
    except Exception as exc:
        ctx.fail(
            record,
            RecordError(
                f"Router {node.id!r}: choosing the route raised {type(exc).__name__}: {exc}",
                node_id=node.id,
                record_id=record.id,
            ),
        )
        return None
    names = [chosen] if isinstance(chosen, str) else list(chosen or [])
    unknown = [n for n in names if n not in node.route_names]
    if unknown or (len(names) > 1 and not node.fan_out):
        problem = (
            f"named {', '.join(map(repr, unknown))}, which is not a route"
            if unknown
            else f"named {len(names)} routes ({', '.join(names)}) without fan_out=True"
        )
        ctx.fail(
            record,
            RecordError(
                f"Router {node.id!r}: the choice {problem}; routes: {', '.join(node.route_names)}.",
                node_id=node.id,
                record_id=record.id,
            ),
        )
        return None
    if names:
        return names
    if node.default is not None:
        return [node.default]
    if node.on_no_match == "pass":
        return []  # goes on unchanged
    if node.on_no_match == "filter":
        ctx.node(node.id).filtered += 1
        return None
    keyed = [r.model.__name__ for r in node.routes if r.model is not None]
    what = (
        f"the value is a {type(record.value).__name__}, none of {', '.join(keyed)}"
        if node.by is None and keyed
        else f"routes: {', '.join(node.route_names)}"
    )
    ctx.fail(
        record,
        RecordError(
            f"Router {node.id!r}: no route matches this record ({what}). "
            "Give the router a default= route, or on_no_match='filter' to drop such records.",
            node_id=node.id,
            record_id=record.id,
        ),
    )
    return None


def _chosen(node: Router, record: Record) -> Any:
    value = record.value
    if node.by is None:
        return [r.name for r in node.routes if r.model is not None and isinstance(value, r.model)][:1]
    if isinstance(node.by, str):
        field = value.get(node.by) if isinstance(value, dict) else getattr(value, node.by)
        return None if field is None else str(field)
    if node.by_wants_record:
        return node.by(value, RecordView(record.id, record.index, record.history))
    return node.by(value)


def _position(order: dict[str, int], record_id: str) -> int:
    """Where the record (or the routed record it was fanned out from, ``<id>.<k>``) was in the chunk."""
    key = owner_id(order, record_id)
    return order[key] if key is not None else len(order)


def _copy(record: Record, new_id: str) -> Record:
    tags = dict(record.tags) if record.tags else None
    return Record(
        new_id,
        record.index,
        record.value,
        dict(record.history),
        record.origin,
        tags,
        record.tokens,
        record.deadline,
        record.budget,
    )
