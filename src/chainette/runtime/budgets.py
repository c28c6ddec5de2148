"""A record's own limits across the whole chain: its deadline and its token budget.

``Record.deadline`` (a ``time.monotonic()`` value) and ``Record.budget`` (tokens) are set when
the record is made (the run's ``record_deadline_s`` / ``record_token_budget``, or a service per
submission); runners call :func:`exceeded` before working on a record, and the step runner cuts
engine calls in flight at :func:`time_left`. Inside a loop the loop asks :func:`limit_hit`
first, so the loop can end (``on_budget="stop"``) rather than the record fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .._errors import BudgetExceededError
from .records import Record

__all__ = ["budget_error", "exceeded", "limit_hit", "time_left"]


def limit_hit(record: Record, now: float | None = None) -> str | None:
    """``"deadline"`` or ``"token_budget"`` when the record is at that limit, else None."""
    if record.deadline is not None and (time.monotonic() if now is None else now) >= record.deadline:
        return "deadline"
    if record.budget is not None and record.tokens >= record.budget:
        return "token_budget"
    return None


def exceeded(
    record: Record, node_id: str, what: str, deadline_s: float | None = None, now: float | None = None
) -> BudgetExceededError | None:
    """The error to fail ``record`` with at ``node_id`` when it is past a limit, else None.

    ``what`` names the node as messages do (``"Step 'qa'"``, ``"apply 'clean'"``); ``deadline_s``
    is the run's ``record_deadline_s``, for the message (None when a submitter set the deadline).
    """
    limit = limit_hit(record, now)
    return None if limit is None else budget_error(record, node_id, what, limit, deadline_s)


def budget_error(
    record: Record, node_id: str, what: str, limit: str, deadline_s: float | None = None
) -> BudgetExceededError:
    """The error for ``record`` at ``limit`` (``"deadline"`` / ``"token_budget"``)."""
    details: dict[str, object] = {"limit": limit}
    if limit == "deadline":
        problem = f"deadline of {deadline_s:g} s passed" if deadline_s is not None else "deadline passed"
        hint = (
            "raise record_deadline_s (or the deadline set on the record), or bound slow nodes with timeout_s"
        )
        details["deadline_s"] = deadline_s
    else:
        word = "exceeded" if record.tokens > (record.budget or 0) else "used up"
        problem = f"token budget of {record.budget} {word} ({record.tokens} used)"
        hint = "raise record_token_budget, or lower max_tokens, re-asks or passes before this node"
        details.update(budget=record.budget, tokens=record.tokens)
    return BudgetExceededError(
        f"{what}: record {record.id} stopped: its {problem}. To let such records finish, {hint}.",
        node_id=node_id,
        record_id=record.id,
        attempts=0,
        details=details,
    )


def time_left(records: Iterable[Record], now: float | None = None) -> float | None:
    """Seconds until the earliest deadline among ``records`` (None: none has one)."""
    deadlines = [r.deadline for r in records if r.deadline is not None]
    if not deadlines:
        return None
    return min(deadlines) - (time.monotonic() if now is None else now)
