"""Running an LLM ``Step`` over a chunk: render, call the engine, validate, re-ask, record.

Requests go to the engine in batches of ``engine.max_batch_size``, with at most
``engine.max_concurrency`` batches in flight per engine across the whole run. A reply that is
not valid JSON for the output model, or was cut off at ``max_tokens``, is re-asked with the
error fed back (``Step.max_reasks`` times); engine errors are not re-asked here. A record that
runs out of attempts goes to ``failures.jsonl`` with the raw text and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import jinja2
from pydantic import BaseModel, ValidationError

from .._errors import EngineError, OutputValidationError, RecordError, RenderError
from ..engines.base import ChatRequest, Completion, Engine, Message
from ..graph.nodes import Step
from .context import RunContext
from .records import Record, coerce, describe_validation, fields_of

__all__ = ["parse_output", "render_messages", "run_step"]

REASK_INVALID = (
    "Your reply was not valid: {error}. Reply again with only a JSON object that matches the schema."
)
REASK_TRUNCATED = (
    "Your reply was cut off after {max_tokens} tokens, before the JSON was complete. "
    "Reply again with a shorter JSON object that matches the schema."
)


@dataclass
class _Job:
    record: Record
    messages: list[Message]
    attempts: int = 0
    raw: str | None = None
    errors: list[str] = field(default_factory=list)
    output: BaseModel | None = None
    reasoning: str | None = None


async def run_step(step: Step, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(step.id)
    stats.records_in += len(chunk)
    jobs: list[_Job] = []
    for record in chunk:
        try:
            jobs.append(_Job(record, render_messages(step, record)))
        except RenderError as exc:
            ctx.fail(record, exc)
    engine, limiter = await ctx.engine(step.engine_name) if jobs else (None, None)
    pending = jobs
    while pending and engine is not None and limiter is not None:
        retry: list[_Job] = []
        size = max(1, engine.max_batch_size)
        async with anyio.create_task_group() as tg:
            for start in range(0, len(pending), size):
                tg.start_soon(_call, step, engine, limiter, pending[start : start + size], retry, ctx)
        pending = retry
    out: list[Record] = []
    for job in jobs:
        if job.output is None:
            continue
        record = job.record.advance(step.id, job.output)
        if step.write:
            row = {"_id": record.id, **job.output.model_dump(mode="json")}
            if job.reasoning:
                row["_reasoning"] = job.reasoning
            ctx.writer.add(step.id, row)
        out.append(record)
    stats.records_out += len(out)
    ctx.progress(step.id)
    return out


def render_messages(step: Step, record: Record) -> list[Message]:
    """The chat messages for ``record``: rendered system prompt + schema instruction, user prompt."""
    try:
        value = coerce(step.input_model, record.value)
    except ValidationError as exc:
        raise RenderError(
            f"Step {step.id!r}: the record does not fit its input model {step.input_model.__name__} "
            f"({describe_validation(exc)}).",
            node_id=step.id,
            record_id=record.id,
        ) from exc
    variables: dict[str, Any] = dict(record.history)
    variables.update(fields_of(value))
    try:
        system = step.system_template.render(variables)
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
    if step.schema_instruction:
        system = f"{system}\n\n{step.schema_instruction}" if system else step.schema_instruction
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return messages


async def _call(
    step: Step,
    engine: Engine,
    limiter: anyio.CapacityLimiter,
    batch: list[_Job],
    retry: list[_Job],
    ctx: RunContext,
) -> None:
    stats = ctx.node(step.id)
    requests = [
        ChatRequest(
            messages=tuple(j.messages),
            json_schema=step.json_schema,
            sampling=step.sampling,
            tag=f"{step.id}/{j.record.id}",
        )
        for j in batch
    ]
    for job in batch:
        job.attempts += 1
    stats.requests += len(batch)
    try:
        async with limiter:
            completions = await engine.generate(requests)
        if len(completions) != len(batch):
            raise RuntimeError(f"engine returned {len(completions)} completions for {len(batch)} requests")
    except Exception as exc:
        for job in batch:
            error = EngineError(
                f"Step {step.id!r}: engine {step.engine_name!r} failed: {type(exc).__name__}: {exc}",
                node_id=step.id,
                record_id=job.record.id,
                attempts=job.attempts,
            )
            error.__cause__ = exc
            ctx.fail(job.record, error)
        return
    for job, completion in zip(batch, completions, strict=True):
        stats.prompt_tokens += completion.prompt_tokens
        stats.completion_tokens += completion.completion_tokens
        outcome = _judge(step, job, completion)
        if outcome is None:
            stats.done += 1
            continue
        if job.attempts <= step.max_reasks:
            stats.reasks += 1
            retry.append(job)
        else:
            ctx.fail(job.record, outcome)
    ctx.progress(step.id)


def _judge(step: Step, job: _Job, completion: Completion) -> RecordError | None:
    """Accept the completion into ``job`` (None), or say why not and prepare the re-ask."""
    job.raw = completion.text
    if completion.finish_reason == "error":
        return EngineError(
            f"Step {step.id!r}: engine reported an error: {completion.text}",
            node_id=step.id,
            record_id=job.record.id,
            attempts=job.attempts,
        )
    if completion.finish_reason == "length":
        problem = f"cut off at max_tokens={step.sampling.max_tokens} (finish_reason='length')"
        reask = REASK_TRUNCATED.format(max_tokens=step.sampling.max_tokens)
    else:
        output, problem = parse_output(step.output_model, completion.text)
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


def parse_output(model: type[BaseModel], text: str) -> tuple[BaseModel | None, str]:
    """Parse and validate ``text`` into ``model``; on failure return ``(None, reason)``.

    Raw control characters inside strings are accepted (small models emit them), and a
    Markdown code fence around the JSON is stripped.
    """
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        data = json.loads(body, strict=False)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at character {exc.pos})"
    try:
        return model.model_validate(data), ""
    except ValidationError as exc:
        return None, f"does not match {model.__name__}: {describe_validation(exc)}"
