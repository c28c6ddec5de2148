"""``Dialogue``: several agents talk in turns about each record (BatchFactory's role-play:
``Character`` + ``Repeat`` + chat history), and the transcript goes on as the dialogue's output.

Agents speak in round-robin order. For agent A's turn the engine gets real chat messages: A's
system prompt (with the schema instruction, when A has an output model), the opening as the
first user message, then every earlier turn in order: A's own as ``assistant`` messages, the
others' as ``user`` messages written ``"<speaker>: <text>"``. Consecutive user messages are
merged into one (separated by a blank line), so roles always alternate: some chat templates
(Mistral's, for one) refuse two user messages in a row, and one form for every engine keeps
ledger keys the same whichever engine answers.

An agent may have per-turn instructions (BatchFactory's ``Teacher("...", k)``): the one for its
k-th turn ends the last user message of that turn, after what the others said. A dialogue may
end with a closing turn (``closing=("teacher", "Sum up.")``): once it stops, that agent speaks
once more with that instruction, and the turn is the transcript's last.

Each agent's turns run as an internal :class:`~chainette.graph.step.Step` (id
``<dialogue>.<agent>``, not written), so every turn is one ledger-keyed request with the step's
dedup, re-asks and failure handling; those ids carry the agents' request, token and cache
counters in ``metadata.json``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, Field, create_model

from .._errors import ChainDefinitionError, TemplateError
from ..engines.base import SamplingParams
from .contract import Checker, Node, Scope
from .hints import wants_record
from .ids import check_id
from .references import check_reference
from .step import Step
from .templates import Template

__all__ = ["DEFAULT_MAX_TURNS", "Agent", "AgentStep", "Dialogue", "StopReason", "Transcript", "Turn"]

DEFAULT_MAX_TURNS = 20
"""The cap on a dialogue that stops by ``until`` and gives neither ``turns`` nor ``max_turns``."""

StopReason = Literal["turns", "until", "max_turns"]


class Turn(BaseModel):
    """One agent speaking once.

    Attributes:
        speaker: The agent's name.
        text: What it said: the reply text for a free-text agent, the validated output as
            compact JSON for an agent with an output model (what the other agents read).
        output: The validated output (``model_dump``) of an agent with an output model.

    Example:
        >>> Turn(speaker="bob", text="Why is the sky blue?")
        Turn(speaker='bob', text='Why is the sky blue?', output=None)
    """

    speaker: str
    text: str
    output: dict[str, Any] | None = None


class Transcript(BaseModel):
    """A dialogue's output: its turns in order, and why it stopped.

    Later templates read it as ``{{ dialogue_id.turns }}`` (e.g.
    ``{% for t in talk.turns %}{{ t.speaker }}: {{ t.text }}{% endfor %}``).

    Attributes:
        turns: The turns, in the order spoken.
        stop_reason: ``"turns"`` (the planned number was reached), ``"until"`` (the stop
            condition held) or ``"max_turns"`` (the cap was reached); None while it goes on.

    Example:
        >>> talk = Transcript(turns=[Turn(speaker="ann", text="Hi."), Turn(speaker="bob", text="Hello!")],
        ...                   stop_reason="turns")
        >>> [t.speaker for t in talk.turns], talk.stop_reason
        (['ann', 'bob'], 'turns')
    """

    turns: list[Turn] = Field(default_factory=list)
    stop_reason: StopReason | None = None


class Agent:
    """One participant of a :class:`Dialogue`.

    Args:
        name: An identifier: how the other agents see it speak (``"bob: ..."``) and the suffix
            of its stats id (``<dialogue>.<name>``).
        system_prompt: Jinja2 template for its system message, rendered against the record like
            a step's templates (``{{ field }}``, ``{{ step_id.field }}``, ``{{ input.field }}``).
        engine_name: Name of a registered engine.
        output_model: Pydantic model each of its turns must produce (decoded under the schema,
            validated, re-asked like a step's output). None: it speaks free text.
        sampling: Sampling parameters (greedy by default).
        max_reasks: How many times invalid or truncated output is re-asked per turn.
        max_chars: For a free-text agent, the longest reply in characters. Free text is asked for
            as ``{"text": ...}`` (see the module notes); the bound goes into that schema, so
            grammar-constrained engines stop there (small models otherwise ramble to max_tokens).
        instructions: What it is told to do on its own turns (Jinja2 templates rendered against
            the record like ``system_prompt``), added at the end of the turn's last user
            message: one string for every turn; a list, the k-th entry for its k-th turn
            (0-based) and the last one for every turn after; or ``{k: text}`` for those turns only.

    Example:
        >>> teacher = Agent("teacher", "You are {{ teacher_name }}, a patient teacher.", "local")
        >>> teacher.name, teacher.output_model is None
        ('teacher', True)
    """

    def __init__(
        self,
        name: str,
        system_prompt: str,
        engine_name: str,
        *,
        output_model: type[BaseModel] | None = None,
        sampling: SamplingParams | None = None,
        max_reasks: int = 2,
        max_chars: int | None = None,
        instructions: str | Sequence[str] | Mapping[int, str] | None = None,
    ) -> None:
        self.name = check_id(name, "Agent")
        if output_model is not None and not (
            isinstance(output_model, type) and issubclass(output_model, BaseModel)
        ):
            raise ChainDefinitionError(
                f"Agent {name!r}: output_model must be a pydantic BaseModel class or None, got {output_model!r}."
            )
        if output_model is not None and max_chars is not None:
            raise ChainDefinitionError(
                f"Agent {name!r}: max_chars bounds free text; with an output_model, bound its fields "
                "instead (Field(max_length=...))."
            )
        if max_reasks < 0:
            raise ChainDefinitionError(f"Agent {name!r}: max_reasks must be >= 0, got {max_reasks}.")
        if max_chars is not None and max_chars < 1:
            raise ChainDefinitionError(f"Agent {name!r}: max_chars must be >= 1, got {max_chars}.")
        if not isinstance(engine_name, str) or not engine_name:
            raise ChainDefinitionError(f"Agent {name!r}: engine_name must be a registered engine's name.")
        self.engine_name = engine_name
        self.output_model = output_model
        self.sampling = sampling or SamplingParams()
        self.max_reasks = max_reasks
        self.max_chars = max_chars
        self.system_template = _template(f"Agent {name!r} system_prompt", system_prompt)
        self.instructions: dict[int, Template] = {}
        """The instruction of the agent's k-th turn (0-based), by k."""
        self.later: Template | None = None
        """The instruction of every turn after those in :attr:`instructions`."""
        if isinstance(instructions, str):
            self.later = _template(f"Agent {name!r} instructions", instructions)
        elif isinstance(instructions, Mapping):
            for k, text in instructions.items():
                if not isinstance(k, int) or isinstance(k, bool) or k < 0 or not isinstance(text, str):
                    raise ChainDefinitionError(
                        f"Agent {name!r}: instructions maps the agent's turn (0, 1, ...) to a text, got {k!r}: "
                        f"{text!r}."
                    )
                self.instructions[k] = _template(f"Agent {name!r} instructions[{k}]", text)
        elif instructions is not None:
            texts = list(instructions)
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ChainDefinitionError(
                    f"Agent {name!r}: instructions must be a text, a list of texts (one per turn of the "
                    f"agent) or {{turn: text}}, got {instructions!r}."
                )
            for k, text in enumerate(texts):
                self.instructions[k] = _template(f"Agent {name!r} instructions[{k}]", text)
            self.later = self.instructions[len(texts) - 1]

    def instruction(self, k: int) -> Template | None:
        """The instruction template of the agent's ``k``-th turn (0-based), if it has one."""
        return self.instructions.get(k, self.later if k >= len(self.instructions) else None)

    def templates(self) -> list[tuple[str, Template]]:
        """Its templates, each with where it is (for checks)."""
        found = [(f"agent {self.name!r} system_prompt", self.system_template)]
        found.extend((f"agent {self.name!r} instructions[{k}]", t) for k, t in self.instructions.items())
        if self.later is not None and self.later not in self.instructions.values():
            found.append((f"agent {self.name!r} instructions", self.later))
        return found

    @property
    def reply_model(self) -> type[BaseModel]:
        """What one turn's reply is validated into (the free-text wrapper for a free-text agent)."""
        if self.output_model is not None:
            return self.output_model
        return _utterance(self.max_chars)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine_name,
            "system_prompt": self.system_template.source,
            "output_model": None
            if self.output_model is None
            else f"{self.output_model.__module__}.{self.output_model.__qualname__}",
            "max_chars": self.max_chars,
            "sampling": self.sampling.model_dump(mode="json"),
            "max_reasks": self.max_reasks,
            **(
                {"instructions": {str(k): t.source for k, t in self.instructions.items()}}
                if self.instructions
                else {}
            ),
            **({"later": self.later.source} if self.later is not None else {}),
        }

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, engine_name={self.engine_name!r})"


def _template(where: str, source: str) -> Template:
    try:
        return Template(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{where} line {exc.lineno}: template syntax error: {exc.message}. "
            "Fix the Jinja2 syntax ({{ name }} for values, {% ... %} for logic)."
        ) from exc


class Utterance(BaseModel):
    """How a free-text agent's reply is asked for: the step machinery validates JSON replies."""

    text: str = Field(description="What you say next in the conversation")


_BOUNDED: dict[int, type[BaseModel]] = {}


def _utterance(max_chars: int | None) -> type[BaseModel]:
    if max_chars is None:
        return Utterance
    model = _BOUNDED.get(max_chars)
    if model is None:
        model = _BOUNDED[max_chars] = create_model(
            "Utterance",
            __base__=Utterance,
            text=(str, Field(max_length=max_chars, description="What you say next in the conversation")),
        )
    return model


class AgentStep(Step):
    """The internal step one agent's turns run as (id ``<dialogue>.<agent>``, never written).

    The dialogue runner builds each turn's messages itself and hands them to the step runner's
    request machinery; this step supplies the engine, schema, sampling and re-ask budget.
    """

    kind = "agent"

    def __init__(self, dialogue_id: str, agent: Agent, input_model: type[BaseModel] | None) -> None:
        super().__init__(
            id=f"{dialogue_id}_{agent.name}",
            input_model=input_model or BaseModel,
            output_model=agent.reply_model,
            engine_name=agent.engine_name,
            sampling=agent.sampling,
            system_prompt=agent.system_template.source,
            user_prompt="",
            max_reasks=agent.max_reasks,
            write=False,
        )
        # a dot cannot appear in a node id, so this never collides with a chain's own ids
        self.id = self.name = f"{dialogue_id}.{agent.name}"
        self.agent = agent


class Dialogue(Node):
    """Agents talking in turns about each record; the transcript goes on under ``id``.

    Args:
        id: The dialogue's id: later templates read the transcript as ``{{ id.turns }}``; its
            transcripts are written to ``<run>/<id>/``.
        agents: Two or more :class:`Agent` with unique names; they speak in this order, round
            robin (one turn = one agent speaking once).
        opening: Jinja2 template rendered against the record: the first user message of the
            conversation (the scene, the task).
        turns: How many turns the dialogue lasts (``stop_reason="turns"``).
        until: ``fn(transcript) -> bool`` (or ``fn(transcript, record: RecordView)``), asked after
            every turn: true stops the dialogue there (``stop_reason="until"``).
        max_turns: The cap, always on: default ``turns`` when given, else
            :data:`DEFAULT_MAX_TURNS` (``stop_reason="max_turns"``).
        closing: ``(agent name, instruction)``: once the dialogue stops (whatever the reason),
            that agent speaks once more, told the instruction (a template rendered against the
            record), and its turn is the transcript's last (``{{ id.turns[-1].text }}``). It is
            not counted by ``turns`` / ``max_turns`` nor asked ``until``.
        input_model: The model the record is validated into before the templates read its
            fields (None: whatever value reaches the dialogue).
        name: Display name (defaults to ``id``).
        write: Write each record's transcript to ``<run>/<id>/`` (default True).

    A turn that fails (engine error, output still invalid after the re-asks) fails the record,
    naming the dialogue, the turn and the agent; the other records go on.

    Example:
        >>> teacher = Agent("teacher", "You are a patient teacher.", "local")
        >>> student = Agent("student", "You are a curious student.", "local")
        >>> lesson = Dialogue("lesson", [teacher, student], opening="Today's text: {{ text }}", turns=4)
        >>> [s.id for s in lesson.children()]
        ['lesson.teacher', 'lesson.student']
    """

    kind = "dialogue"
    counts_records = True
    output_model: type[BaseModel]

    def __init__(
        self,
        id: str,
        agents: Sequence[Agent],
        *,
        opening: str,
        turns: int | None = None,
        until: Callable[..., Any] | None = None,
        max_turns: int | None = None,
        closing: tuple[str, str] | None = None,
        input_model: type[BaseModel] | None = None,
        name: str | None = None,
        write: bool = True,
    ) -> None:
        self.id = check_id(id, "Dialogue")
        self.name = name or id
        self.agents = list(agents)
        if len(self.agents) < 2 or not all(isinstance(a, Agent) for a in self.agents):
            raise ChainDefinitionError(
                f"Dialogue {id!r}: agents must be two or more Agent objects, got {list(agents)!r}. "
                "For one agent, use a Step."
            )
        names = [a.name for a in self.agents]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ChainDefinitionError(
                f"Dialogue {id!r}: agent names must be unique (they tell the speakers apart); "
                f"used more than once: {', '.join(dupes)}."
            )
        if turns is None and until is None:
            raise ChainDefinitionError(
                f"Dialogue {id!r}: say how long it lasts: turns=n, or until=fn(transcript) -> bool "
                f"(capped by max_turns, default {DEFAULT_MAX_TURNS})."
            )
        for label, value in (("turns", turns), ("max_turns", max_turns)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ChainDefinitionError(
                    f"Dialogue {id!r}: {label} must be an integer >= 1, got {value!r}."
                )
        if until is not None and not callable(until):
            raise ChainDefinitionError(f"Dialogue {id!r}: until must be a function, got {until!r}.")
        self.turns = turns
        self.max_turns = max_turns if max_turns is not None else (turns or DEFAULT_MAX_TURNS)
        if turns is not None and turns > self.max_turns:
            raise ChainDefinitionError(
                f"Dialogue {id!r}: turns={turns} exceeds max_turns={self.max_turns}; raise max_turns."
            )
        self.until = until
        self.until_wants_record = until is not None and wants_record(until)
        if input_model is not None and not (
            isinstance(input_model, type) and issubclass(input_model, BaseModel)
        ):
            raise ChainDefinitionError(
                f"Dialogue {id!r}: input_model must be a pydantic BaseModel class or None, got {input_model!r}."
            )
        self.input_model = input_model
        self.output_model = Transcript
        self.write = write
        self.opening = _template(f"Dialogue {id!r} opening", opening)
        self.closing: tuple[int, Template] | None = None
        """The closing turn: the index of its agent, and its instruction."""
        if closing is not None:
            if not (
                isinstance(closing, tuple) and len(closing) == 2 and all(isinstance(c, str) for c in closing)
            ):
                raise ChainDefinitionError(
                    f"Dialogue {id!r}: closing must be (agent name, instruction), got {closing!r}."
                )
            if closing[0] not in names:
                close = difflib.get_close_matches(closing[0], names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ChainDefinitionError(
                    f"Dialogue {id!r}: closing names agent {closing[0]!r}, which is not one of its agents "
                    f"({', '.join(names)}){hint}."
                )
            self.closing = (names.index(closing[0]), _template(f"Dialogue {id!r} closing", closing[1]))
        self.steps = [AgentStep(self.id, agent, input_model) for agent in self.agents]

    def children(self) -> Sequence[Node]:
        return self.steps

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        checker.check_input(self, self.input_model, current, prev)
        for agent in self.agents:
            checker.check_engine(self, agent.engine_name, f"Dialogue {self.id!r} agent {agent.name!r}")
        model = self.input_model or current
        unknown: list[str] = []
        templates = [found for a in self.agents for found in a.templates()]
        if self.closing is not None:
            templates.append(("closing", self.closing[1]))
        for which, template in [*templates, ("opening", self.opening)]:
            unknown.extend(self._check_template(checker, which, template, model, scope))
        if unknown:
            checker.add(
                "warning",
                self,
                f"Dialogue {self.id!r} reads {', '.join(dict.fromkeys(unknown))} from the record, whose type is "
                "unknown here: checked per record at run time (give the dialogue an input_model to check it now).",
            )
        scope[self.key] = Transcript
        checker.placement.pop(self.key, None)
        return Transcript

    def _check_template(
        self, checker: Checker, which: str, template: Template, model: type[BaseModel] | None, scope: Scope
    ) -> list[str]:
        """The step's reference check, reported as this dialogue's. The record's fields are
        ``model``'s; with no model known, the names that are no earlier output are returned
        (left to run time)."""
        unknown = []
        for ref in template.references:
            if model is None and ref.name not in scope and ref.name not in checker.placement:
                unknown.append(str(ref))
                continue
            check_reference(checker, self, f"Dialogue {self.id!r} {which}", model or BaseModel, ref, scope)
        return unknown

    def describe(self) -> dict[str, Any]:
        until = None if self.until is None else getattr(self.until, "__name__", "function")
        return {
            **super().describe(),
            "agents": [a.describe() for a in self.agents],
            "opening": self.opening.source,
            "turns": self.turns,
            "until": until,
            "max_turns": self.max_turns,
            **(
                {"closing": [self.agents[self.closing[0]].name, self.closing[1].source]}
                if self.closing is not None
                else {}
            ),
        }
