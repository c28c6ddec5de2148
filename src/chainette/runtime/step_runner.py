"""Running an LLM ``Step`` over a chunk: render, ask the ledger, call the engine, validate, re-ask.

Each attempt is keyed (``ledger.keys.request_key``). What the ledger holds is answered from it;
of identical requests in flight only one is sent, in this process and, through claims in the
ledger, in every process sharing it (one sends, the others wait for its answer to land there). The rest go to the engine, started lazily on
the first miss, in batches of ``engine.max_batch_size`` with at most ``engine.max_concurrency``
batches in flight per engine across the whole run; answers are committed to the ledger as they
arrive. A reply that is not valid JSON for the output model, or was cut off at ``max_tokens``,
is re-asked with the error fed back (``Step.max_reasks`` times); engine errors are not re-asked
here. A record that runs out of attempts goes to ``failures.jsonl`` with the raw text and the
reason, and then, per ``Step.on_failure``: ``retry`` (nothing remembered: a rerun re-sends engine
errors, while stored invalid answers replay and fail the same way), ``stay``
(remembered in the ledger: reruns report it without sending) or ``emit`` (also passed on).

A step's :class:`~chainette.graph.policy.NodePolicy` adds two things around the engine call:
``timeout_s`` bounds each ``generate`` call (``anyio.move_on_after``: the call is cancelled, which
closes an HTTP request or stops llama.cpp decoding; a batching engine's records share a call),
and ``retries`` sends a request again, after the policy's backoff, when the call raised, timed
out or answered ``finish_reason="error"``. A retry is the same request with the same key: error
answers are never stored, so it goes through the ledger lookup and the one-send-per-key claim
like any first attempt. Re-asks and retries are counted apart (``reasks`` / ``retries``).

A record's own limits (``Record.deadline``, ``Record.budget``) are checked before every round of
requests, and a call in flight is cut at the earliest deadline of its batch: a record past
them fails with ``BudgetExceededError`` (never remembered in the ledger nor emitted).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import jinja2
import orjson
from pydantic import BaseModel, ValidationError

from .._errors import BudgetExceededError, EngineError, OutputValidationError, RecordError, RenderError
from ..engines.base import ChatRequest, Completion, Engine, Message, SamplingParams
from ..engines.secrets import scrub_text
from ..graph.nodes import Step
from ..ledger.keys import after_first, key_of, key_of_rest, key_prefix
from ..ledger.store import StoredAnswer, StoredFailure
from .budgets import budget_error, exceeded, time_left
from .context import DeltaHandler, NodeStats, RunContext
from .records import Record, coerce, describe_validation, dump, fields_of, request_salt
from .requests import InFlight

__all__ = ["iter_step", "parse_output", "render_messages", "run_step"]

REASK_INVALID = (
    "Your reply was not valid: {error}. Reply again with only a JSON object that matches the schema."
)
REASK_TRUNCATED = (
    "Your reply was cut off after {max_tokens} tokens, before the JSON was complete. "
    "Reply again with a shorter JSON object that matches the schema."
)

_KINDS: dict[str, type[RecordError]] = {
    cls.kind: cls for cls in (OutputValidationError, EngineError, RenderError, RecordError)
}
"""A failure remembered in the ledger is raised again as the same kind of error."""


@dataclass(slots=True)
class _Job:
    record: Record
    messages: list[Message]
    sample: int = 0
    asks: int = 0
    """Re-asks made so far: the budget ``Step.max_reasks`` counts these."""
    attempts: int = 0
    """Requests made for this record here, as failures.jsonl reports them: each answer's sends
    (``Completion.attempts``: transport retries included, 0 if never sent), 1 for an answer from
    the ledger or an identical request, 1 for a call that raised."""
    first_key: str = ""
    """Ledger key of the first attempt: where a final failure is remembered (``on_failure="stay"``)."""
    raw: str | None = None
    errors: list[str] = field(default_factory=list)
    output: BaseModel | None = None
    reasoning: str | None = None
    failure: RecordError | None = None
    failed_calls: int = 0
    """Engine errors so far (a raise, an error answer, a timeout): what the policy's retries count."""
    ready_at: float = 0.0
    """``time.monotonic()`` before which a retry is not sent (its backoff)."""


@dataclass
class _Round:
    """What one pass over the pending jobs decided."""

    retry: list[_Job] = field(default_factory=list)
    stays: list[tuple[str, StoredFailure]] = field(default_factory=list)


SAMPLES_PER_PASS = 256
"""With ``samples > 1``, samples are made and sent this many at a time (or one chunk's worth,
when that is more), and each pass goes downstream before the next is made: memory stays flat in
the sample count, and a cancel (Ctrl-C) is seen between passes."""


async def run_step(step: Step, chunk: list[Record], ctx: RunContext) -> list[Record]:
    """Run ``step`` over ``chunk``; the records that go on (samples included, all at once)."""
    out: list[Record] = []
    async for part in iter_step(step, chunk, ctx):
        out.extend(part)
    return out


async def iter_step(step: Step, chunk: list[Record], ctx: RunContext) -> AsyncIterator[list[Record]]:
    """Run ``step`` over ``chunk``, yielding the records that go on one pass at a time.

    Without samples there is one pass. With ``samples=n`` the ``n`` samples of each record are
    made lazily, ``max(len(chunk), SAMPLES_PER_PASS)`` per pass.
    """
    stats = ctx.node(step.id)
    stats.records_in += len(chunk)
    rendered: list[tuple[Record, list[Message]]] = []
    for record in chunk:
        try:
            rendered.append((record, render_messages(step, record)))
        except RenderError as exc:
            ctx.fail(record, exc)
    if step.samples == 1:
        if rendered:
            yield await _run_jobs(step, [_Job(record, messages) for record, messages in rendered], ctx)
        else:
            ctx.progress(step.id)
        return
    size = max(len(chunk), SAMPLES_PER_PASS)
    jobs: list[_Job] = []
    for record, messages in rendered:
        for k in range(step.samples):
            jobs.append(_Job(record.sample(k), messages, sample=k))
            if len(jobs) >= size:
                yield await _run_jobs(step, jobs, ctx)
                jobs = []
    if jobs or not rendered:
        yield await _run_jobs(step, jobs, ctx)


async def _run_jobs(step: Step, jobs: list[_Job], ctx: RunContext) -> list[Record]:
    """Every attempt for ``jobs`` (ledger, engine, re-asks); the records that go on."""
    stats = ctx.node(step.id)
    pending = jobs
    first = True
    retrying = step.policy is not None and step.policy.retries > 0
    while pending:
        later: list[_Job] = []
        if retrying:  # jobs waiting out a backoff sit this round out (re-asks go at once)
            now = time.monotonic()
            due = [j for j in pending if j.ready_at <= now]
            if not due:
                await anyio.sleep(min(j.ready_at for j in pending) - now)
                continue
            if len(due) < len(pending):
                later = [j for j in pending if j.ready_at > now]
            pending = due
        decided = await _attempt(step, pending, ctx, first)
        if decided.stays:
            await ctx.cache.store_failures(decided.stays)
        pending, first = decided.retry + later, False
    if ctx.cache.mode == "refresh" and step.on_failure == "stay":
        await ctx.cache.forget_failures([j.first_key for j in jobs if j.output is not None])
    out: list[Record] = []
    key, write, add = step.key, step.write, ctx.writer.add
    for job in jobs:
        output = job.output
        if output is not None:
            record = job.record.advance(key, output)
            row = {"_id": record.id, **record.tags} if record.tags else {"_id": record.id}
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
            row = {"_id": record.id, **record.tags} if record.tags else {"_id": record.id}
            row["_error"] = job.failure.message
        else:
            continue
        if write:
            add(step.id, row)
        out.append(record)
    stats.records_out += len(out)
    ctx.progress(step.id)
    return out


async def _attempt(step: Step, pending: list[_Job], ctx: RunContext, first: bool) -> _Round:
    """One attempt for every pending job: ledger first, then one send per distinct request."""
    stats = ctx.node(step.id)
    decided = _Round()
    if any(job.record.limited for job in pending):
        pending = _within_limits(step, pending, ctx, decided)
        if not pending:
            return decided
    identity = ctx.identity(step.engine_name)
    prefixes: dict[int, Any] = {}  # per sample index: what the step's requests share, hashed
    openings: dict[int, Any] = {}  # the same with the step's fixed system message hashed in
    fixed = step.fixed_system
    keys: list[str] = []
    for job in pending:
        sample = job.sample
        prefix = prefixes.get(sample)
        if prefix is None:
            prefix = prefixes[sample] = key_prefix(identity, step.json_schema, _sampling(step, job))
        tags = job.record.tags
        salt = request_salt(tags) if tags else ""
        messages = job.messages
        if fixed and len(messages) > 1 and messages[0]["content"] is fixed:  # made by _messages
            opening = openings.get(sample)
            if opening is None:
                opening = openings[sample] = after_first(prefix, messages[0])
            key = key_of_rest(opening, messages[1:], sample, salt)
        else:
            key = key_of(prefix, messages, sample, salt)
        keys.append(key)
        if first:
            job.first_key = key
    stay_keys = keys if first and step.on_failure == "stay" else []
    hits, stayed = await ctx.cache.lookup(keys, stay_keys)
    owned: list[tuple[_Job, ChatRequest, str]] = []
    waiting: list[tuple[_Job, InFlight]] = []
    for job, key in zip(pending, keys, strict=True):
        if stayed and first and job.first_key in stayed:
            kept = stayed[job.first_key]
            error = _KINDS.get(kept.error_type, RecordError)(
                kept.message, node_id=step.id, record_id=job.record.id, raw=kept.raw, attempts=kept.attempts
            )
            error.details = {"from_ledger": True}
            _give_up(step, job, error, ctx, decided, remember=False)
        elif key in hits:
            stats.cache_hits += 1
            _settle(step, job, hits[key], ctx, stats, decided, sent=False)
        else:
            slot, mine = ctx.cache.claim(key)
            if mine:
                owned.append((job, _request(step, job, _sampling(step, job)), key))
            else:
                waiting.append((job, slot))
    if owned:
        await _send_claimed(step, owned, ctx, decided)
    for job, slot in waiting:
        if job.record.deadline is None:
            await slot.done.wait()
        else:  # waiting on an identical request is waiting on an engine call: cut at the deadline too
            with anyio.move_on_after(job.record.deadline - time.monotonic()):
                await slot.done.wait()
            late = time.monotonic() + 1e-3 >= job.record.deadline  # the shared call may have been cut there
            cut = slot.abandoned or (slot.completion is not None and slot.completion.finish_reason == "error")
            if not slot.done.is_set() or (late and cut):
                job.attempts += 1
                error = budget_error(
                    job.record, step.id, f"Step {step.id!r}", "deadline", ctx.record_deadline_s
                )
                error.attempts = job.attempts
                _give_up(step, job, error, ctx, decided, remember=False)
                continue
        if slot.abandoned:  # its owner was cancelled or could not send: claim it again, no ask spent
            decided.retry.append(job)
            continue
        assert slot.completion is not None
        stats.deduped += 1
        _settle(step, job, slot.completion, ctx, stats, decided, sent=False)
    ctx.progress(step.id)
    return decided


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


def _sampling(step: Step, job: _Job) -> SamplingParams:
    """Sample ``k`` of a record samples with seed ``seed + k``, so samples differ at temperature > 0."""
    sampling = step.sampling
    if job.sample and sampling.seed is not None:
        sampling = sampling.model_copy(update={"seed": sampling.seed + job.sample})
    return sampling


def _request(step: Step, job: _Job, sampling: SamplingParams) -> ChatRequest:
    return ChatRequest.model_construct(  # built from validated parts: skip re-validation per record
        messages=tuple(job.messages),
        json_schema=step.json_schema,
        sampling=sampling,
        tag=f"{step.id}/{job.record.id}",
    )


async def _send_claimed(
    step: Step, owned: list[tuple[_Job, ChatRequest, str]], ctx: RunContext, decided: _Round
) -> None:
    """Claim the requests this process owns in the shared ledger, then send those granted and
    wait for those another process is sending (answered from the ledger once they land there)."""
    try:
        answers, granted, held = await ctx.cache.claim_shared([key for _, _, key in owned])
    except BaseException:
        for _, _, key in owned:
            ctx.cache.abandon(key)
        raise
    if not answers and not held:  # the usual case: nobody else is sending these
        await _send(step, owned, ctx, decided)
        return
    by_key = {item[2]: item for item in owned}
    _answered_elsewhere(step, by_key, answers, ctx, decided)
    async with anyio.create_task_group() as tg:
        if granted:
            tg.start_soon(_send, step, [by_key.pop(key) for key in granted], ctx, decided)
        await _wait_claimed(step, {key: by_key[key] for key in held}, ctx, decided, tg)


async def _wait_claimed(
    step: Step,
    waiting: dict[str, tuple[_Job, ChatRequest, str]],
    ctx: RunContext,
    decided: _Round,
    tg: anyio.abc.TaskGroup,
) -> None:
    """Poll the ledger (backing off to 2 s) for requests another process claimed: an answer that
    landed settles its record, a claim released or expired (its owner failed or died) is taken
    over and sent from here, a record past its deadline fails."""
    delay = 0.05
    try:
        while waiting:
            await anyio.sleep(delay)
            delay = min(2.0, delay * 1.5)
            now = time.monotonic()
            for key, (job, _, _) in list(waiting.items()):
                if job.record.deadline is not None and now >= job.record.deadline:
                    del waiting[key]
                    ctx.cache.abandon(key)
                    job.attempts += 1
                    error = budget_error(
                        job.record, step.id, f"Step {step.id!r}", "deadline", ctx.record_deadline_s
                    )
                    error.attempts = job.attempts
                    _give_up(step, job, error, ctx, decided, remember=False)
            answers, granted, _ = await ctx.cache.claim_shared(list(waiting))
            _answered_elsewhere(step, waiting, answers, ctx, decided)
            if granted:
                tg.start_soon(_send, step, [waiting.pop(key) for key in granted], ctx, decided)
    finally:  # cancelled: identical requests of this process claim them again
        for key in waiting:
            ctx.cache.abandon(key)


def _answered_elsewhere(
    step: Step,
    items: dict[str, tuple[_Job, ChatRequest, str]],
    answers: dict[str, StoredAnswer],
    ctx: RunContext,
    decided: _Round,
) -> None:
    """Answers another process stored for requests this one claimed: settled like ledger hits."""
    stats = ctx.node(step.id)
    for key, answer in answers.items():
        job, _, _ = items.pop(key)
        ctx.cache.resolve(key, Completion(**answer._asdict()))
        stats.cache_hits += 1
        _settle(step, job, answer, ctx, stats, decided, sent=False)


async def _send(
    step: Step, owned: list[tuple[_Job, ChatRequest, str]], ctx: RunContext, decided: _Round
) -> None:
    """Send the requests this step owns in engine-sized batches; resolve every claimed key."""
    keys = [key for _, _, key in owned]
    try:
        engine, limiter = await ctx.engine(step.engine_name)
        size = max(1, engine.max_batch_size)
        async with anyio.create_task_group() as leases:
            leases.start_soon(ctx.cache.keep_leases, keys)  # renewed in the ledger while in flight
            async with anyio.create_task_group() as tg:
                for start in range(0, len(owned), size):
                    tg.start_soon(_call, step, engine, limiter, owned[start : start + size], ctx, decided)
            leases.cancel_scope.cancel()
    finally:  # an engine that failed to start, or a cancelled send (a cancelled trace), must not
        # leave duplicates waiting: they claim the request again (and fail themselves if it cannot be sent)
        for key in keys:
            ctx.cache.abandon(key)
        await ctx.cache.release(keys)  # those without a stored answer: another process may send them


async def _call(
    step: Step,
    engine: Engine,
    limiter: anyio.CapacityLimiter,
    batch: list[tuple[_Job, ChatRequest, str]],
    ctx: RunContext,
    decided: _Round,
) -> None:
    stats = ctx.node(step.id)
    timeout = step.policy.timeout_s if step.policy is not None else None
    limited = any(job.record.limited for job, _, _ in batch)
    began = 0.0
    try:
        async with limiter:
            began = time.monotonic()
            if timeout is None and not limited:  # the usual call: no bound
                completions = await _ask(step, engine, batch, ctx)
            else:  # bounded by the policy's timeout and the batch's earliest deadline, from now
                left = time_left(job.record for job, _, _ in batch) if limited else None
                by_timeout = left is None or (timeout is not None and timeout <= left)
                with anyio.move_on_after(timeout if by_timeout else left) as scope:
                    completions = await _ask(step, engine, batch, ctx)
                if scope.cancelled_caught:
                    _attempts(step, batch, ctx, began, None)
                    _cut(step, batch, ctx, decided, timeout, by_timeout=by_timeout)
                    return
        stats.requests += sum(1 for c in completions if c.attempts > 0)  # answered (see NodeStats)
        if len(completions) != len(batch):
            raise RuntimeError(f"engine returned {len(completions)} completions for {len(batch)} requests")
    except Exception as exc:
        reason = Completion(text=f"{type(exc).__name__}: {exc}", finish_reason="error")
        _attempts(step, batch, ctx, began, [reason] * len(batch))
        for job, _, key in batch:
            ctx.cache.resolve(key, reason)
            job.attempts += 1
            error = EngineError(
                f"Step {step.id!r}: engine {step.engine_name!r} failed: {type(exc).__name__}: {exc}",
                node_id=step.id,
                record_id=job.record.id,
                attempts=job.attempts,
            )
            error.__cause__ = exc
            _engine_failed(step, job, error, f"{type(exc).__name__}: {exc}", ctx, decided)
        return
    _attempts(step, batch, ctx, began, completions)
    await ctx.cache.store(
        [(key, step.engine_name, step.id, c) for (_, _, key), c in zip(batch, completions, strict=True)]
    )
    for (job, _, key), completion in zip(batch, completions, strict=True):
        ctx.cache.resolve(key, completion)
        _settle(step, job, completion, ctx, stats, decided, sent=True)
    ctx.progress(step.id)


def _attempts(
    step: Step,
    batch: list[tuple[_Job, ChatRequest, str]],
    ctx: RunContext,
    began: float,
    completions: list[Completion] | None,
) -> None:
    """One ``attempt`` event per record of an engine call that ended (``completions`` None: cut
    by a timeout), when a listener asked for them."""
    if not ctx.wants("attempt"):
        return
    took = round(time.monotonic() - began, 6) if began else 0.0
    for k, (job, _, _) in enumerate(batch):
        outcome = "timeout" if completions is None else completions[k].finish_reason
        ctx.tell("attempt", job.record, step.id, attempt=job.attempts + 1, duration_s=took, outcome=outcome)


async def _ask(
    step: Step, engine: Engine, batch: list[tuple[_Job, ChatRequest, str]], ctx: RunContext
) -> list[Completion]:
    """The engine's answers to ``batch``: streamed one request at a time when a served trace
    wants the pieces and the engine streams, else one ``generate`` call."""
    on_delta = ctx.on_delta
    if on_delta is not None and engine.supports_streaming:
        return [await _stream(step, engine, job, request, on_delta) for job, request, _ in batch]
    return await engine.generate([request for _, request, _ in batch])


async def _stream(
    step: Step, engine: Engine, job: _Job, request: ChatRequest, on_delta: DeltaHandler
) -> Completion:
    """``engine.stream(request)``: each piece reported as it arrives; the final completion."""
    text = ""
    completion: Completion | None = None
    async with aclosing(engine.stream(request)) as items:  # closed early (cancelled): the request stops
        async for item in items:
            if isinstance(item, Completion):
                completion = item
            elif item:
                text += item
                on_delta(step.id, job.record.id, item, text)
    if completion is None:
        raise RuntimeError(f"engine {step.engine_name!r} ended a stream without its completion")
    return completion


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


def render_messages(step: Step, record: Record) -> list[Message]:
    """The chat messages for ``record``: rendered system prompt + schema instruction, user prompt."""
    value: Any
    if step.policy is not None and not step.policy.validates_input:  # the value as it is
        return _messages(step, record, {**record.history, **fields_of(record.value)})
    try:
        value = coerce(step.input_model, record.value)
    except ValidationError as exc:
        if not step.reads_input_fields:  # the templates read earlier outputs only: nothing to fit
            return _messages(step, record, dict(record.history))
        raise RenderError(
            f"Step {step.id!r}: the record does not fit its input model {step.input_model.__name__} "
            f"({describe_validation(exc)}).",
            node_id=step.id,
            record_id=record.id,
        ) from exc
    return _messages(step, record, {**record.history, **fields_of(value)})


def _messages(step: Step, record: Record, variables: dict[str, Any]) -> list[Message]:
    try:
        system = step.system_template.render(variables) if step.fixed_system is None else ""
        user = step.user_template.render(variables)
    except jinja2.UndefinedError as exc:
        raise RenderError(
            f"Step {step.id!r}: template failed on record {record.id}: {exc.message}. "
            "A referenced value is missing or None for this record; guard it with {% if ... %}.",
            node_id=step.id,
            record_id=record.id,
        ) from exc
    except Exception as exc:  # jinja filters can raise anything; keep it on this record
        raise RenderError(
            f"Step {step.id!r}: template failed on record {record.id}: {type(exc).__name__}: {exc}",
            node_id=step.id,
            record_id=record.id,
        ) from exc
    if step.fixed_system is not None:
        system = step.fixed_system
    elif step.schema_instruction:
        system = f"{system}\n\n{step.schema_instruction}" if system else step.schema_instruction
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return messages


def _judge(step: Step, job: _Job, completion: Completion | StoredAnswer) -> RecordError | None:
    """Accept the completion into ``job`` (None), or say why not and prepare the re-ask."""
    job.raw = completion.text
    if completion.finish_reason == "error":
        sent = getattr(completion, "attempts", 1)
        earlier = (
            f" ({job.attempts} attempt(s) for this record, re-asks included)" if sent < job.attempts else ""
        )
        return EngineError(
            f"Step {step.id!r}: engine reported an error: {completion.text}{earlier}",
            node_id=step.id,
            record_id=job.record.id,
            attempts=job.attempts,
        )
    if completion.finish_reason == "length":
        problem = f"cut off at max_tokens={step.sampling.max_tokens} (finish_reason='length')"
        reask = REASK_TRUNCATED.format(max_tokens=step.sampling.max_tokens)
    else:
        output, problem = parse_output(step, completion.text)
        if output is not None:
            job.output = output
            job.reasoning = completion.reasoning
            return None
        reask = REASK_INVALID.format(error=problem)
    job.errors.append(problem)
    job.messages = [
        *job.messages,
        {"role": "assistant", "content": completion.text},
        {"role": "user", "content": reask},
    ]
    return OutputValidationError(
        f"Step {step.id!r}: output invalid after {job.attempts} attempt(s): {problem}",
        node_id=step.id,
        record_id=job.record.id,
        raw=completion.text,
        attempts=job.attempts,
        details={"errors": list(job.errors)},
    )


def parse_output(target: type[BaseModel] | Step, text: str) -> tuple[BaseModel | None, str]:
    """Parse and validate ``text`` into ``target`` (a model class, or a step's output: its
    model, or the variant of its union that matches); on failure return ``(None, reason)``.

    Raw control characters inside strings are accepted (small models emit them), and a
    Markdown code fence around the JSON is stripped.
    """
    if isinstance(target, Step) and not text.startswith("```"):
        try:  # the usual answer: JSON that fits (surrounding whitespace is fine), parsed and checked at once
            return target.validate_output_json(text), ""
        except ValidationError:
            pass  # lenient parsing below, and the error message
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # the slower parser accepts raw control characters inside strings, as small models write them
            data = json.loads(body, strict=False)
        except json.JSONDecodeError as exc:
            return None, f"not valid JSON ({exc.msg} at character {exc.pos})"
    validate: Callable[[Any], BaseModel]
    if isinstance(target, Step):
        validate, variants = target.validate_output, target.variants
    else:
        validate, variants = target.model_validate, (target,)
    try:
        return validate(data), ""
    except ValidationError as exc:
        if len(variants) > 1:
            tried = ", ".join(v.__name__ for v in variants)
            return None, f"matches none of the variants {tried}: {describe_validation(exc)}"
        return None, f"does not match {variants[0].__name__}: {describe_validation(exc)}"
