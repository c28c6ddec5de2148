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

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, nullcontext
from typing import Any

import anyio
import anyio.abc

from .._errors import EngineError, RecordError, RenderError
from ..engines.base import ChatRequest, Completion, Engine, Message, SamplingParams
from ..graph.nodes import Step
from ..ledger.keys import after_first, key_of, key_of_rest, key_prefix
from ..ledger.store import StoredAnswer, StoredFailure
from .budgets import budget_error, time_left
from .coalesce import coalesces
from .context import DeltaHandler, RunContext
from .records import Record, request_salt
from .requests import InFlight
from .step_io import _Job, _Round, parse_output, render_messages
from .step_outcome import _KINDS, _cut, _engine_failed, _give_up, _go_on, _settle, _within_limits

__all__ = ["iter_step", "parse_output", "render_messages", "run_step"]

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
    return await _finish_jobs(step, jobs, ctx, first=True)


async def _finish_jobs(step: Step, jobs: list[_Job], ctx: RunContext, *, first: bool) -> list[Record]:
    """:func:`_run_jobs` for ``jobs`` at their ``first`` attempt or later."""
    await _until_decided(step, jobs, ctx, first=first)
    if ctx.cache.mode == "refresh" and step.on_failure == "stay":
        await ctx.cache.forget_failures([j.first_key for j in jobs if j.output is not None])
    return _go_on(step, jobs, ctx)


async def _until_decided(step: Step, pending: list[_Job], ctx: RunContext, *, first: bool) -> None:
    """Attempts (ledger, engine, re-asks, retries) until every job has an output or a failure."""
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


async def _attempt(
    step: Step, pending: list[_Job], ctx: RunContext, first: bool, *, ledger_only: bool = False
) -> _Round:
    """One attempt for every pending job: ledger first, then one send per distinct request
    (``ledger_only``: none; the misses go to ``missed``, unclaimed)."""
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
    hits: dict[str, StoredAnswer] = {}
    stayed: dict[str, StoredFailure] = {}
    if not (first and all(job.looked_up for job in pending)):  # (misses already looked up: not again)
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
        elif ledger_only:
            job.looked_up = True
            decided.missed.append(job)
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
        if len(owned) <= size and ctx.cache.ledger is None:  # one call, no ledger claims to renew
            await _call(step, engine, limiter, owned, ctx, decided)
            return
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
        async with nullcontext() if _gathered(engine, ctx) else limiter:  # gathered: the coalescer holds it
            began = time.monotonic()
            if timeout is None and not limited:  # the usual call: no bound
                completions = await _ask(step, engine, batch, ctx)
            elif _gathered(engine, ctx) and timeout is not None:  # the timeout starts when the call is sent
                left = time_left(job.record for job, _, _ in batch) if limited else None
                until = math.inf if left is None else anyio.current_time() + left  # the deadline: from now
                scope = anyio.CancelScope(deadline=until)
                by_timeout = False

                def sent() -> None:  # the coalescer took the batch into a call: the request's own time
                    nonlocal began, by_timeout
                    began = time.monotonic()
                    by_timeout = anyio.current_time() + timeout <= until
                    scope.deadline = min(until, anyio.current_time() + timeout)

                with scope:
                    completions = await _ask(step, engine, batch, ctx, sent)
                if scope.cancelled_caught:
                    _attempts(step, batch, ctx, began, None)
                    _cut(step, batch, ctx, decided, timeout, by_timeout=by_timeout)
                    return
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
        stats.unsent += sum(1 for c in completions if c.attempts == 0 and c.finish_reason == "error")
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
    step: Step,
    engine: Engine,
    batch: list[tuple[_Job, ChatRequest, str]],
    ctx: RunContext,
    on_sent: Callable[[], None] | None = None,
) -> list[Completion]:
    """The engine's answers to ``batch``: streamed one request at a time when a served trace
    wants the pieces and the engine streams, else one ``generate`` call (through the engine's
    coalescer, which calls ``on_sent`` as the call that holds them starts)."""
    on_delta = ctx.on_delta
    if on_delta is not None and engine.supports_streaming:
        return [await _stream(step, engine, job, request, on_delta) for job, request, _ in batch]
    requests = [request for _, request, _ in batch]
    if coalesces(engine):  # with the requests of other records pending now, in one call
        return await ctx.coalescer(step.engine_name, engine).generate(requests, on_sent)
    return await engine.generate(requests)


def _gathered(engine: Engine, ctx: RunContext) -> bool:
    """Whether :func:`_ask` goes through the engine's coalescer (which takes the call slots)."""
    return coalesces(engine) and not (ctx.on_delta is not None and engine.supports_streaming)


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
                on_delta(step.id, job.record.id, item, text, False)
    if completion is None:
        raise RuntimeError(f"engine {step.engine_name!r} ended a stream without its completion")
    on_delta(step.id, job.record.id, "", text, True)  # the answer is complete
    return completion
