"""What a step sends and how its reply is judged: the chat messages rendered from the step's
templates, a request's state across attempts (``_Job``), and the reply parsed, validated into the
output model, or turned into a re-ask. No engine, ledger or event here (``step_runner.py`` drives).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
import orjson
from pydantic import BaseModel, ValidationError

from .._errors import EngineError, OutputValidationError, RecordError, RenderError
from ..engines.base import Completion, Message
from ..graph.nodes import Step
from ..ledger.store import StoredAnswer, StoredFailure
from .records import Record, coerce, describe_validation, fields_of

__all__ = ["REASK_INVALID", "REASK_TRUNCATED", "parse_output", "render_messages"]

REASK_INVALID = (
    "Your reply was not valid: {error}. Reply again with only a JSON object that matches the schema."
)
REASK_TRUNCATED = (
    "Your reply was cut off after {max_tokens} tokens, before the JSON was complete. "
    "Reply again with a shorter JSON object that matches the schema."
)


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
    looked_up: bool = False
    """Its first request was looked up in the ledger already (a miss): not read again."""


@dataclass
class _Round:
    """What one pass over the pending jobs decided."""

    retry: list[_Job] = field(default_factory=list)
    stays: list[tuple[str, StoredFailure]] = field(default_factory=list)
    missed: list[_Job] = field(default_factory=list)
    """(ledger only) Jobs whose request the ledger does not hold: neither claimed nor sent."""


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
            f" ({job.attempts} attempt(s) for this record, re-asks included)"
            if 0 < sent < job.attempts
            else ""
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
