"""What a step's attempt decides for a request: an answer settled (counted, accepted or re-asked),
an engine error retried under the node's policy or given up, a call cut at a timeout or deadline.
Then, once every job is decided, the rows written and the records that go on (``_go_on``). A pure
part of ``step_runner.py``: no engine call or ledger read here (a final failure to remember is
handed back in ``_Round.stays``).
"""

from __future__ import annotations

import time

from .._errors import BudgetExceededError, EngineError, OutputValidationError, RecordError, RenderError
from ..engines.base import ChatRequest, Completion
from ..engines.secrets import scrub_text
from ..graph.nodes import Step
from ..ledger.store import StoredAnswer, StoredFailure
from .budgets import budget_error, exceeded
from .context import NodeStats, RunContext
from .records import Record, dump, node_row
from .step_io import _Job, _judge, _Round

_KINDS: dict[str, type[RecordError]] = {
    cls.kind: cls for cls in (OutputValidationError, EngineError, RenderError, RecordError)
}
"""A failure remembered in the ledger is raised again as the same kind of error."""


def _cut(
    step: Step,
    batch: list[tuple[_Job, ChatRequest, str]],
    ctx: RunContext,
    decided: _Round,
    timeout: float | None,
    *,
    by_timeout: bool,
) -> None:
    """A call cut short: its records past their deadline fail, the others count an engine error
    (cut by the policy's ``timeout_s``) or go round again (cut by another record's deadline)."""
    now = time.monotonic() + 1e-3  # the cancel fires at the deadline, give or take the clock's tick
    problem = f"timed out after {timeout:g} s" if timeout is not None else "timed out"
    for job, _, key in batch:
        ctx.cache.resolve(key, Completion(text=problem, finish_reason="error"))
        job.attempts += 1
        deadline = job.record.deadline
        if deadline is not None and now >= deadline:
            error: RecordError = budget_error(
                job.record, step.id, f"Step {step.id!r}", "deadline", ctx.record_deadline_s
            )
            error.attempts = job.attempts
            _give_up(step, job, error, ctx, decided, remember=False)
        elif by_timeout:
            ctx.tell("timeout", job.record, step.id, attempt=job.attempts, timeout_s=timeout)
            message = f"Step {step.id!r}: engine {step.engine_name!r} {problem} (timeout_s of its policy)"
            error = EngineError(message, node_id=step.id, record_id=job.record.id, attempts=job.attempts)
            _engine_failed(step, job, error, problem, ctx, decided)
        else:  # cut at a sibling's deadline, not its own: this call does not count against it
            job.attempts -= 1
            decided.retry.append(job)


def _engine_failed(
    step: Step, job: _Job, error: RecordError, problem: str, ctx: RunContext, decided: _Round
) -> None:
    """An engine error for ``job``: tried again after the policy's backoff while it has retries
    left, else the record fails, the message saying how many attempts and the last error."""
    policy = step.policy
    job.failed_calls += 1
    if policy is None:
        _give_up(step, job, error, ctx, decided)
        return
    if job.failed_calls <= policy.retries:
        ctx.node(step.id).retries += 1
        delay = policy.backoff.delay(job.failed_calls, f"{step.id}/{job.record.id}")
        job.ready_at = time.monotonic() + delay
        ctx.tell("retry", job.record, step.id, attempt=job.attempts, error=scrub_text(problem), delay_s=delay)
        decided.retry.append(job)
        return
    if policy.retries:
        attempts = "attempt" if job.attempts == 1 else "attempts"
        final = EngineError(
            f"Step {step.id!r}: engine {step.engine_name!r} failed after {job.attempts} {attempts} "
            f"({job.failed_calls} engine errors, retries={policy.retries} of its policy used up); "
            f"last error: {problem}. Check the engine, or raise retries / timeout_s in the step's NodePolicy.",
            node_id=step.id,
            record_id=job.record.id,
            raw=error.raw,
            attempts=job.attempts,
            details=error.details,
        )
        final.__cause__ = error.__cause__
        error = final
    _give_up(step, job, error, ctx, decided)


def _settle(
    step: Step,
    job: _Job,
    completion: Completion | StoredAnswer,
    ctx: RunContext,
    stats: NodeStats,
    decided: _Round,
    *,
    sent: bool,
) -> None:
    """Count the answer (in ``stats``, the step's), accept it or plan the re-ask, or give up on
    the record."""
    job.record.tokens += completion.prompt_tokens + completion.completion_tokens  # a loop's max_tokens
    if ctx.usage is not None:  # a traced run: tokens per input position
        ctx.usage.add_usage(
            step.id, job.record.index, completion.prompt_tokens, completion.completion_tokens, sent=sent
        )
    if sent:
        stats.prompt_tokens += completion.prompt_tokens
        stats.completion_tokens += completion.completion_tokens
    else:
        stats.saved_prompt_tokens += completion.prompt_tokens
        stats.saved_completion_tokens += completion.completion_tokens
    job.attempts += getattr(completion, "attempts", 1)  # a stored answer: one attempt
    outcome = _judge(step, job, completion)
    if outcome is None:
        stats.done += 1
    elif isinstance(outcome, EngineError):  # not an answer: retried under the policy, never re-asked
        _engine_failed(step, job, outcome, completion.text, ctx, decided)
    elif job.asks < step.max_reasks:
        job.asks += 1
        stats.reasks += 1
        ctx.tell(
            "reask",
            job.record,
            step.id,
            attempt=job.attempts,
            reask=job.asks,
            error=scrub_text(job.errors[-1]),
        )
        decided.retry.append(job)
    else:
        _give_up(step, job, outcome, ctx, decided)


def _give_up(
    step: Step, job: _Job, error: RecordError, ctx: RunContext, decided: _Round, *, remember: bool = True
) -> None:
    """The record fails here for good: to failures.jsonl, remembered or passed on per ``on_failure``."""
    job.failure = error
    ctx.fail(job.record, error, emitted=step.on_failure == "emit")
    if step.on_failure == "stay" and remember and job.first_key:
        decided.stays.append(
            (job.first_key, StoredFailure(step.id, error.kind, error.message, error.raw, error.attempts))
        )


def _go_on(step: Step, jobs: list[_Job], ctx: RunContext) -> list[Record]:
    """The decided ``jobs``' rows written; the records that go on."""
    stats = ctx.node(step.id)
    out: list[Record] = []
    key, write, add = step.key, step.write, ctx.writer.add
    for job in jobs:
        output = job.output
        if output is not None:
            record = job.record.advance(key, output)
            row = node_row(record)
            row.update(dump(output))
            if job.reasoning:
                row["_reasoning"] = job.reasoning
        elif (
            job.failure is not None
            and step.on_failure == "emit"
            and not isinstance(job.failure, BudgetExceededError)
        ):
            # passed on marked as failed: the value stays the step's input, the step's slot holds the reason
            record = job.record
            record.history[key] = {"_error": job.failure.message}
            row = node_row(record)
            row["_error"] = job.failure.message
        else:
            continue
        if write:
            add(step.id, row)
        out.append(record)
    stats.records_out += len(out)
    ctx.progress(step.id)
    return out


def _within_limits(step: Step, pending: list[_Job], ctx: RunContext, decided: _Round) -> list[_Job]:
    """The jobs whose records are within their deadline and token budget; the others fail."""
    now = time.monotonic()
    going: list[_Job] = []
    for job in pending:
        over = exceeded(job.record, step.id, f"Step {step.id!r}", ctx.record_deadline_s, now)
        if over is None:
            going.append(job)
        else:
            over.attempts = job.attempts
            _give_up(step, job, over, ctx, decided, remember=False)
    return going
