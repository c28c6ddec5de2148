"""Running a :class:`~chainette.graph.loop.Loop`: every record of a chunk loops in lockstep.

Each pass runs the body (``dispatch.run_sequence``) over the records still looping, so engine
calls stay batched; a record leaves when its loop ends (condition, until, times, a limit), or
when it failed or was filtered inside the body (already in failures.jsonl, or counted). During
pass ``k`` a record's ``tags`` hold ``{"<loop id>.iteration": k}``: its rows in the step folders
carry that column and its requests get keys of their own (``records.request_salt``). The
records go on in input order, with the value of their last pass and ``history[<loop id>]`` =
their :class:`~chainette.graph.loop.LoopState`.

A loop's ``max_hops`` / ``max_tokens`` / ``deadline_s`` read from each record
(``Loop.per_record``) are read as the record enters: a record whose value is missing or no valid
limit fails there (``InvalidInputError``, naming the record, the limit and the field), before
any pass. During each pass ``history[<loop id>].carry`` is the value the pass started from.

A record's own deadline and token budget (``runtime/budgets.py``) are asked before each pass,
after the loop's own reasons: reached, the loop ends (``on_budget="stop"``: stop reason
``"deadline"`` / ``"max_tokens"``, the record goes on) or the record fails (``"fail"``). With
``"stop"``, a ``BudgetExceededError`` raised inside the body (the limit reached in the middle
of a pass) is caught by the loop's context: the record is put back as it was after its last
completed pass and leaves the loop there, instead of failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .._errors import ApplyError, BudgetExceededError, InvalidInputError, RecordError
from ..graph.loop import LIMITS, Loop, LoopState, StopReason
from ..graph.view import RecordView
from .budgets import budget_error, limit_hit
from .context import NodeStats, RunContext
from .dispatch import run_sequence
from .records import Record, iteration_tag, owner_id

__all__ = ["LoopStats", "run_loop"]


@dataclass
class LoopStats(NodeStats):
    """A loop's counters in ``metadata.json``: the node's, plus how many records stopped for
    each reason (``{"until": 12, "max_iterations": 2}``)."""

    stop_reasons: dict[str, int] = field(default_factory=dict)
    passes: int = 0
    """Passes run over a chunk (a pass runs the body once over the chunk's looping records)."""

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "stop_reasons": dict(self.stop_reasons)}


class _Looping:
    """One record's place in the loop: where it was in the chunk, what to restore after."""

    __slots__ = (
        "deadline_s",
        "max_hops",
        "max_tokens",
        "outer_tags",
        "position",
        "record",
        "saved",
        "tokens_in",
    )

    def __init__(self, position: int, record: Record, node: Loop) -> None:
        self.position = position
        self.record = record
        self.outer_tags = record.tags
        self.tokens_in = record.tokens
        self.max_hops: int | None = node.max_hops
        self.max_tokens: int | None = node.max_tokens
        self.deadline_s: float | None = node.deadline_s
        """The record's limits: the loop's, or its own (:func:`_read_limits`)."""
        self.saved: tuple[Any, dict[str, Any]] | None = None
        """The value and history after the last completed pass (kept only while a budget could
        stop the record in the middle of a pass)."""

    def spent(self) -> int:
        return self.record.tokens - self.tokens_in


async def run_loop(node: Loop, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = _stats(ctx, node.id)
    stats.records_in += len(chunk)
    failed = 0  # here, by the loop itself (counted locally: other chunks run meanwhile)
    started = time.monotonic()
    finished: list[Record | None] = [None] * len(chunk)
    hops_per_pass = len(node.body)
    tag = iteration_tag(node.id)
    looping = [_Looping(k, record, node) for k, record in enumerate(chunk)]
    for entry in looping:
        entry.record.history[node.key] = LoopState()

    def fail(entry: _Looping, error: RecordError) -> None:
        nonlocal failed
        failed += 1
        entry.record.tags = entry.outer_tags
        ctx.fail(entry.record, error)

    def finish(entry: _Looping, passes: int, reason: StopReason | RecordError) -> None:
        if isinstance(reason, RecordError):  # its condition or until raised
            fail(entry, reason)
            return
        record = entry.record
        record.tags = entry.outer_tags
        record.history[node.key] = _state(node, passes, entry.spent(), reason)
        stats.stop_reasons[reason] = stats.stop_reasons.get(reason, 0) + 1
        if reason in LIMITS and node.on_limit == "fail":
            fail(entry, _limit_error(node, entry, passes, entry.spent(), reason))
        else:
            finished[entry.position] = record

    def out_of_budget(entry: _Looping, passes: int, limit: str) -> None:
        """The record's own deadline or token budget ended its loop (``on_budget``)."""
        record = entry.record
        if node.on_budget == "fail":
            fail(entry, budget_error(record, node.id, f"Loop {node.id!r}", limit, ctx.record_deadline_s))
            return
        ctx.tell("budget_exceeded", record, node.id, limit=limit, stopped=True)
        reason: StopReason = "deadline" if limit == "deadline" else "max_tokens"
        record.tags = entry.outer_tags
        record.history[node.key] = _state(node, passes, entry.spent(), reason)
        stats.stop_reasons[reason] = stats.stop_reasons.get(reason, 0) + 1
        finished[entry.position] = record

    if node.per_record:
        readable = []
        for entry in looping:
            error = _read_limits(node, entry)
            if error is None:
                readable.append(entry)
            else:
                fail(entry, error)
        looping = readable

    body_ctx = ctx
    stops: dict[str, BudgetExceededError] = {}
    if node.on_budget == "stop" and any(r.limited for r in chunk):
        body_ctx = _BudgetStops.around(ctx, stops)

    passes = 0
    while looping:
        going: list[_Looping] = []
        for entry in looping:
            reason = _decide(node, entry, passes, started, after=False)
            limit = limit_hit(entry.record) if reason is None and entry.record.limited else None
            if limit is not None:
                out_of_budget(entry, passes, limit)
            elif reason is None:
                going.append(entry)
            else:
                finish(entry, passes, reason)
        if not going:
            break
        if isinstance(body_ctx, _BudgetStops):
            stops.clear()
            body_ctx.looping.clear()
            for entry in going:
                body_ctx.looping.add(entry.record.id)
                entry.saved = (entry.record.value, dict(entry.record.history))
        ctx.on_event("loop_pass", {"node": node.id, "iteration": passes, "records": len(going)})
        for entry in going:
            record = entry.record
            record.tags = {**entry.outer_tags, tag: passes} if entry.outer_tags else {tag: passes}
            record.history[node.key] = LoopState.model_construct(
                iteration=passes,
                iterations=passes,
                stop_reason=None,
                hops=passes * hops_per_pass,
                tokens=entry.spent(),
                carry=record.value,
            )
        outputs = await run_sequence(node.body, [e.record for e in going], body_ctx)
        stats.passes += 1
        passes += 1
        looping = []
        for entry, outs in _match(going, outputs):
            if len(outs) > 1:
                fail(entry, _fan_out_error(node, entry.record, passes - 1, outs))
            if not outs and entry.saved is not None and entry.record.id in stops:  # cut inside the pass
                entry.record.value, entry.record.history = entry.saved
                limit = str(stops[entry.record.id].details.get("limit", "deadline"))
                out_of_budget(entry, passes - 1, limit)
                continue
            if len(outs) != 1:  # none: it failed or was filtered in the body (already reported there)
                continue
            entry.record = outs[0]
            entry.record.history[node.key] = _state(node, passes, entry.spent(), None)
            reason = _decide(node, entry, passes, started, after=True)
            if reason is None:
                looping.append(entry)
            else:
                finish(entry, passes, reason)
    out = [r for r in finished if r is not None]
    stats.records_out += len(out)
    stats.done += len(chunk) - failed  # ctx.fail counted those
    ctx.progress(node.id)
    return out


@dataclass
class _BudgetStops(RunContext):
    """The context a loop with ``on_budget="stop"`` runs its body in: a looping record failed
    there for its deadline or token budget is not written to failures.jsonl but noted in
    ``stops`` (by the record's id), so the loop can end it after its last completed pass."""

    stops: dict[str, BudgetExceededError] = field(default_factory=dict)
    looping: set[str] = field(default_factory=set)
    """Ids of the records in the current pass."""

    @classmethod
    def around(cls, ctx: RunContext, stops: dict[str, BudgetExceededError]) -> _BudgetStops:
        shared = {f.name: getattr(ctx, f.name) for f in fields(RunContext) if f.init}
        return cls(**shared, stops=stops)

    def fail(self, record: Record, error: RecordError, *, emitted: bool = False) -> None:
        if isinstance(error, BudgetExceededError) and self.child_failures is None:  # map children: the map's
            owner = owner_id(self.looping, record.id)
            if owner is not None:
                self.stops.setdefault(owner, error)
                self.node(error.node_id).done += 1  # finished there, as far as its progress goes
                return
        super().fail(record, error, emitted=emitted)


def _stats(ctx: RunContext, node_id: str) -> LoopStats:
    stats = ctx.stats.get(node_id)
    if not isinstance(stats, LoopStats):
        loop_stats = LoopStats()
        if stats is not None:  # counted before the loop first ran (not expected): keep it
            vars(loop_stats).update(vars(stats))
        stats = ctx.stats[node_id] = loop_stats
    return stats


def _state(node: Loop, passes: int, tokens: int, reason: StopReason | None) -> LoopState:
    """The state after ``passes`` passes (``iteration``: the last one's index)."""
    return LoopState.model_construct(
        iteration=max(passes - 1, 0),
        iterations=passes,
        stop_reason=reason,
        hops=passes * len(node.body),
        tokens=tokens,
    )


def _stop_before(node: Loop, entry: _Looping, passes: int, started: float) -> StopReason | None:
    """Why the record runs no further pass (``passes`` done so far), or None to run one."""
    if node.times is not None and passes >= node.times:
        return "times"
    if node.condition is not None and not _call(node.condition, node.condition_wants_record, entry.record):
        return "condition"
    if passes >= node.cap:
        return "max_iterations"
    if entry.max_hops is not None and (passes + 1) * len(node.body) > entry.max_hops:
        return "max_hops"
    if entry.max_tokens is not None and entry.spent() >= entry.max_tokens:
        return "max_tokens"
    if entry.deadline_s is not None and time.monotonic() - started >= entry.deadline_s:
        return "deadline"
    return None


def _stop_after(node: Loop, entry: _Looping) -> StopReason | None:
    if node.until is not None and _call(node.until, node.until_wants_record, entry.record):
        return "until"
    return None


def _call(fn: Callable[..., Any], wants_record: bool, record: Record) -> bool:
    if wants_record:
        return bool(fn(record.value, RecordView(record.id, record.index, record.history)))
    return bool(fn(record.value))


def _decide(
    node: Loop, entry: _Looping, passes: int, started: float, *, after: bool
) -> StopReason | RecordError | None:
    """Why the record's loop ends now (after ``passes`` passes), None to go on, or the error to
    fail it with when its condition or until raised."""
    try:
        return _stop_after(node, entry) if after else _stop_before(node, entry, passes, started)
    except Exception as exc:
        which, when = (
            ("until", f"after pass {passes - 1}") if after else ("condition", f"before pass {passes}")
        )
        return RecordError(
            f"Loop {node.id!r}: {which} raised {type(exc).__name__}: {exc} ({when}). Fix the function, "
            "or make it handle such records.",
            node_id=node.id,
            record_id=entry.record.id,
        )


def _match(going: list[_Looping], outputs: list[Record]) -> list[tuple[_Looping, list[Record]]]:
    """Each looping record with what the body made of it: itself, a copy or children
    (``<id>.<k>``), or nothing (failed or filtered there); in input order."""
    by_object = {id(e.record): k for k, e in enumerate(going)}
    by_id = {e.record.id: k for k, e in enumerate(going)}
    made: list[list[Record]] = [[] for _ in going]
    for record in outputs:
        k = by_object.get(id(record))
        if k is None:
            record_id = record.id
            while record_id not in by_id and "." in record_id:
                record_id = record_id.rsplit(".", 1)[0]
            k = by_id.get(record_id)
        if k is None:
            raise RuntimeError(
                f"a loop body returned record {record.id!r}, which no record that went in made"
            )
        made[k].append(record)
    return list(zip(going, made, strict=True))


def _fan_out_error(node: Loop, record: Record, iteration: int, outs: list[Record]) -> RecordError:
    ids = ", ".join(r.id for r in outs[:4]) + (", ..." if len(outs) > 4 else "")
    return RecordError(
        f"Loop {node.id!r}: pass {iteration} of the body produced {len(outs)} outputs for this record "
        f"({ids}); a loop's body must produce exactly one per pass, since it goes round. Move the fan-out "
        "(a step with samples > 1, an apply returning a list, a router with fan_out) before or after the loop.",
        node_id=node.id,
        record_id=record.id,
    )


_LIMIT_HINTS = {
    "max_iterations": "raise max_iterations",
    "max_hops": "raise max_hops",
    "max_tokens": "raise max_tokens",
    "deadline": "raise deadline_s",
}


def _read_limits(node: Loop, entry: _Looping) -> RecordError | None:
    """Set ``entry``'s limits read from its record; the error to fail it with when one cannot be read."""
    record = entry.record
    view = RecordView(record.id, record.index, record.history)
    for label, limit in node.per_record.items():
        try:
            value = limit.read(record.value, view)
        except (LookupError, ValueError) as exc:
            return InvalidInputError(
                f"Loop {node.id!r}: record {record.id} has no valid {label} ({limit.describe()}): {exc}. "
                f"Give every record a valid {label} (None for no limit), or a default in its model.",
                node_id=node.id,
                record_id=record.id,
                details={"limit": label, "field": limit.field},
            )
        except Exception as exc:
            return ApplyError(
                f"Loop {node.id!r}: {label} ({limit.describe()}) raised {type(exc).__name__}: {exc} "
                f"on record {record.id}. Fix the function, or make it handle such records.",
                node_id=node.id,
                record_id=record.id,
                details={"limit": label},
            )
        setattr(entry, label, value)
    return None


def _limit_error(node: Loop, entry: _Looping, passes: int, tokens: int, reason: str) -> RecordError:
    record = entry.record
    own = {key: f" (record's {limit.describe()})" for key, limit in node.per_record.items()}
    detail = {
        "max_iterations": f"it still wanted another pass after max_iterations={node.cap}",
        "max_hops": f"another pass would take it past max_hops={entry.max_hops}{own.get('max_hops', '')} "
        f"({passes * len(node.body)} hops used, {len(node.body)} per pass)",
        "max_tokens": f"it spent {tokens} tokens in the loop (max_tokens={entry.max_tokens}"
        f"{own.get('max_tokens', '')})",
        "deadline": f"deadline_s={entry.deadline_s}{own.get('deadline_s', '')} passed since it entered the loop",
    }[reason]
    return RecordError(
        f"Loop {node.id!r} stopped this record at its {reason} limit after {passes} pass(es)"
        f"{f' (last iteration {passes - 1})' if passes else ''}: {detail}. To let it finish, "
        f"{_LIMIT_HINTS[reason]}; to pass such records on with their last value, use on_limit='continue'.",
        node_id=node.id,
        record_id=record.id,
        details={"limit": reason, "iterations": passes, "tokens": tokens},
    )
