"""Running a :class:`~chainette.graph.dialogue.Dialogue` over a chunk: the records take turns in
lockstep (turn ``t`` of every record still talking is one batch of requests, so engines batch),
each turn through the step runner's request machinery (ledger, dedup, re-asks, failures).

An agent's per-turn instructions (rendered once per record) end the last user message of its
turn; once a record's dialogue stops, the closing turn (``Dialogue.closing``) runs the same way
for the records that stopped, and is appended to their transcripts.

A record whose turn fails leaves the dialogue there: it is written to failures.jsonl under the
dialogue's id, the message naming the turn and the agent. The others go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import jinja2
from pydantic import BaseModel, ValidationError

from .._errors import ApplyError, RecordError, RenderError
from ..engines.base import Message
from ..graph.dialogue import AgentStep, Dialogue, StopReason, Transcript, Turn
from ..graph.templates import Template
from ..graph.view import RecordView
from .context import RunContext
from .records import Record, coerce, describe_validation, fields_of
from .step_io import _Job
from .step_runner import _run_jobs

__all__ = ["conversation", "run_dialogue"]


@dataclass
class _Talk:
    """One record's dialogue in progress."""

    record: Record
    systems: list[str]
    """Each agent's system message (prompt + schema instruction), rendered once per record."""
    opening: str
    instructions: list[dict[int, str]] = field(default_factory=list)
    """Each agent's rendered instructions by its turn (see :func:`_instruction`)."""
    closing: str | None = None
    turns: list[Turn] = field(default_factory=list)
    stop: StopReason | None = None
    failed: bool = False


async def run_dialogue(node: Dialogue, chunk: list[Record], ctx: RunContext) -> list[Record]:
    stats = ctx.node(node.id)
    stats.records_in += len(chunk)
    if node.write:
        ctx.writer.open_folder(node.id)  # a dialogue is no leaf: the run did not create its folder
    talks: list[_Talk] = []
    for record in chunk:
        try:
            talks.append(_start(node, record))
        except RenderError as exc:
            ctx.fail(record, exc)
    for t in range(node.max_turns):
        live = [talk for talk in talks if talk.stop is None and not talk.failed]
        if not live:
            break
        k = t % len(node.agents)
        own = t // len(node.agents)  # the agent's own turn
        await _speak(node, k, live, [_instruction(node, talk, k, own) for talk in live], t + 1, ctx)
        for talk in live:
            if not talk.failed:
                talk.stop = _stop(node, talk, t + 1, ctx)
        ctx.progress(node.id)
    if node.closing is not None:
        closing = [talk for talk in talks if talk.stop is not None and not talk.failed]
        for turn in sorted({len(talk.turns) + 1 for talk in closing}):  # one batch per turn number
            same = [talk for talk in closing if len(talk.turns) + 1 == turn]
            await _speak(node, node.closing[0], same, [talk.closing for talk in same], turn, ctx)
    out: list[Record] = []
    for talk in talks:
        if talk.failed or talk.stop is None:
            continue
        transcript = Transcript(turns=talk.turns, stop_reason=talk.stop)
        record = talk.record.advance(node.key, transcript)
        if node.write:
            ctx.writer.add(
                node.id, {"_id": record.id, "_index": record.index, **transcript.model_dump(mode="json")}
            )
        out.append(record)
    stats.records_out += len(out)
    stats.done += len(out)
    ctx.progress(node.id)
    return out


async def _speak(
    node: Dialogue, k: int, talks: list[_Talk], instructions: list[str | None], turn: int, ctx: RunContext
) -> None:
    """Agent ``k`` takes turn ``turn`` in each of ``talks`` (one batch of requests)."""
    step = node.steps[k]
    jobs = [
        _Job(
            _shadow(talk.record),
            conversation(step.agent.name, talk.systems[k], talk.opening, talk.turns, instruction),
        )
        for talk, instruction in zip(talks, instructions, strict=True)
    ]
    ctx.node(step.id).records_in += len(jobs)
    await _run_jobs(step, jobs, _TurnContext.around(ctx, node, turn, step))
    for talk, job in zip(talks, jobs, strict=True):
        if job.output is None:  # failed: already in failures.jsonl, under the dialogue
            talk.failed = True
        else:
            talk.turns.append(_turn(step, job.output))


def _instruction(node: Dialogue, talk: _Talk, k: int, own: int) -> str | None:
    """Agent ``k``'s rendered instruction for its ``own``-th turn in ``talk``."""
    template = node.agents[k].instruction(own)
    if template is None:
        return None
    by_turn = talk.instructions[k]
    return by_turn.get(own) if own in by_turn else by_turn.get(-1)


def conversation(
    speaker: str, system: str, opening: str, turns: list[Turn], instruction: str | None = None
) -> list[Message]:
    """The chat messages for ``speaker``'s next turn: its system message, the opening, then the
    earlier turns (its own as ``assistant``, the others' as ``user`` ``"<name>: <text>"``), with
    consecutive user messages merged so roles alternate; ``instruction`` (the agent's for this
    turn) ends the last user message."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    heard = [opening]
    for turn in turns:
        if turn.speaker == speaker:
            if heard:
                messages.append({"role": "user", "content": "\n\n".join(heard)})
                heard = []
            messages.append({"role": "assistant", "content": turn.text})
        else:
            heard.append(f"{turn.speaker}: {turn.text}")
    if instruction:
        heard.append(instruction)
    if heard:
        messages.append({"role": "user", "content": "\n\n".join(heard)})
    return messages


@dataclass
class _TurnContext(RunContext):
    """The run's context for one turn: a record that fails is reported under the dialogue,
    naming the turn and the agent (the step runner would name only its internal step)."""

    dialogue: str = ""
    turn: int = 0
    step: AgentStep | None = None

    @classmethod
    def around(cls, ctx: RunContext, node: Dialogue, turn: int, step: AgentStep) -> _TurnContext:
        shared = {f.name: getattr(ctx, f.name) for f in fields(RunContext) if f.init}
        return cls(**shared, dialogue=node.id, turn=turn, step=step)

    def fail(self, record: Record, error: RecordError, *, emitted: bool = False) -> None:
        assert self.step is not None
        agent = self.step.agent.name
        reason = error.message.removeprefix(f"Step {self.step.id!r}: ")
        error.message = f"Dialogue {self.dialogue!r} turn {self.turn} (agent {agent!r}): {reason}"
        error.args = (error.message,)
        error.node_id = self.dialogue
        error.details = {**error.details, "turn": self.turn, "agent": agent}
        super().fail(record, error, emitted=emitted)


def _start(node: Dialogue, record: Record) -> _Talk:
    """Render the agents' system messages and the opening for ``record``."""
    value: Any = record.value
    if node.input_model is not None:
        try:
            value = coerce(node.input_model, value)
        except ValidationError as exc:
            raise RenderError(
                f"Dialogue {node.id!r}: the record does not fit its input model {node.input_model.__name__} "
                f"({describe_validation(exc)}).",
                node_id=node.id,
                record_id=record.id,
            ) from exc
    variables: dict[str, Any] = dict(record.history)
    variables.update(fields_of(value))
    systems = []
    for step in node.steps:
        system = _render(
            node, f"agent {step.agent.name!r} system_prompt", step.agent.system_template, variables, record
        )
        if step.schema_instruction:
            system = f"{system}\n\n{step.schema_instruction}" if system else step.schema_instruction
        systems.append(system)
    instructions: list[dict[int, str]] = []
    for agent in node.agents:
        rendered = {
            k: _render(node, f"agent {agent.name!r} instructions[{k}]", t, variables, record)
            for k, t in agent.instructions.items()
        }
        if agent.later is not None:  # -1: every later turn
            rendered[-1] = _render(node, f"agent {agent.name!r} instructions", agent.later, variables, record)
        instructions.append(rendered)
    closing = None
    if node.closing is not None:
        closing = _render(node, "closing", node.closing[1], variables, record)
    opening = _render(node, "opening", node.opening, variables, record)
    return _Talk(record, systems, opening, instructions, closing)


def _render(node: Dialogue, which: str, template: Template, variables: dict[str, Any], record: Record) -> str:
    try:
        return template.render(variables)
    except jinja2.UndefinedError as exc:
        problem = f"{exc.message}. A referenced value is missing or None for this record; guard it with {{% if ... %}}."
    except Exception as exc:  # jinja filters can raise anything; keep it on this record
        problem = f"{type(exc).__name__}: {exc}"
    raise RenderError(
        f"Dialogue {node.id!r} {which} failed on record {record.id}: {problem}",
        node_id=node.id,
        record_id=record.id,
    )


def _shadow(record: Record) -> Record:
    """What a turn's job carries: the record as failures.jsonl reports it, with a history of its
    own (the step runner records its output there, which must not reach the real record)."""
    return Record(record.id, record.index, record.value, {}, record.origin, deadline=record.deadline)


def _turn(step: AgentStep, output: BaseModel) -> Turn:
    if step.agent.output_model is None:
        return Turn(speaker=step.agent.name, text=str(getattr(output, "text", "")).strip())
    return Turn(speaker=step.agent.name, text=output.model_dump_json(), output=output.model_dump(mode="json"))


def _stop(node: Dialogue, talk: _Talk, done: int, ctx: RunContext) -> StopReason | None:
    """Why the dialogue stops after turn ``done`` (None: it goes on). A stop condition that raises
    fails the record."""
    if node.until is not None:
        record = talk.record
        transcript = Transcript(turns=list(talk.turns))
        try:
            if node.until_wants_record:
                stop = node.until(transcript, RecordView(record.id, record.index, record.history))
            else:
                stop = node.until(transcript)
        except Exception as exc:
            talk.failed = True
            agent = talk.turns[-1].speaker
            ctx.fail(
                record,
                ApplyError(
                    f"Dialogue {node.id!r} turn {done} (agent {agent!r}): until raised {type(exc).__name__}: {exc}",
                    node_id=node.id,
                    record_id=record.id,
                    details={"turn": done, "agent": agent},
                ),
            )
            return None
        if stop:
            return "until"
    if node.turns is not None and done >= node.turns:
        return "turns"
    if done >= node.max_turns:
        return "max_turns"
    return None
