"""``Step``: one LLM call per record, its output bound to a model (or a union of models) by
guided JSON decoding. A kind over the node contract (``graph.contract``); the runtime's step
runner sends its requests.
"""

from __future__ import annotations

import json
import typing
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import jinja2
from pydantic import BaseModel, TypeAdapter

from .._errors import ChainDefinitionError, TemplateError
from ..engines.base import SamplingParams
from .contract import Checker, Node, Scope
from .ids import check_id
from .policy import NodePolicy, check_policy
from .references import check_reference
from .schema_prompt import schema_instruction
from .templates import Template

__all__ = ["FAILURE_BEHAVIOURS", "OnFailure", "Step"]

OnFailure = Literal["retry", "stay", "emit"]
FAILURE_BEHAVIOURS: tuple[str, ...] = get_args(OnFailure)


class Step(Node):
    """One LLM call per record, with output bound to ``output_model`` by guided JSON decoding.

    Args:
        id: Unique identifier; later templates read this step's output as ``{{ id.field }}``.
        input_model: Pydantic model the incoming record is validated into.
        output_model: Pydantic model the LLM must produce (the JSON schema constrains decoding),
            or a union of models (``Cat | Dog``, ``typing.Union[Cat, Dog]``,
            ``Annotated[Cat | Dog, Field(discriminator="kind")]``): the model answers one of them,
            and the record goes on as that variant's instance, so a :class:`Router` keyed by the
            variant classes routes it. The step then keeps the annotation as ``output_type`` and
            its members as ``variants``; its ``output_model`` is None (checked per record).
        engine_name: Name of a registered engine.
        name: Display name (defaults to ``id``).
        sampling: Sampling parameters (greedy by default).
        system_prompt: Jinja2 template for the system message.
        user_prompt: Jinja2 template for the user message. ``{{ field }}`` reads the input record,
            ``{{ step_id.field }}`` / ``{{ alias.field }}`` earlier outputs of the same record,
            ``{{ input.field }}`` the chain's original input.
        output_format_instruction: Text appended to the system prompt describing the schema;
            ``None`` lists the output fields with their types, limits and descriptions (write
            ``Field(description=...)`` to guide the model); in your own text ``{schema}`` is
            replaced by the JSON schema; ``""`` adds nothing.
        max_reasks: How many times invalid or truncated output is re-asked, with the
            validation error fed back, before the record goes to the run's failures.
        write: Write this step's outputs to ``<run>/<id>/`` (default True).
        samples: Answers per record. With ``samples=n > 1`` each record becomes ``n`` records
            ``<id>.0`` … ``<id>.<n-1>``; sample ``k`` uses seed ``seed + k`` and its own ledger
            key, so with temperature > 0 the samples differ, and reruns reuse them.
        on_failure: What happens to a record that still fails here after the re-asks (it is
            written to ``failures.jsonl`` in every case): ``"retry"`` (default) remembers nothing,
            so the next run into the same ledger re-sends requests that ended in an engine error,
            while invalid answers replay from the ledger and fail the same way (for a fresh try:
            ``cache="refresh"``, change the step, or raise ``max_reasks``); ``"stay"`` remembers
            the failure in the ledger, so reruns report it without sending anything; ``"emit"``
            also passes the record on, with ``{"_error": reason}`` as this step's output (its
            value stays the step's input).
        policy: A :class:`~chainette.graph.policy.NodePolicy`: ``timeout_s`` bounds each engine
            call (a call past it is cancelled and counts as an engine error), ``retries`` tries
            engine errors again with ``backoff`` (never invalid answers: those are re-asked under
            ``max_reasks``), ``validate="output"`` / ``"none"`` skips fitting the incoming value
            into ``input_model``. The answer is always parsed into the output model.

    Example:
        >>> from pydantic import BaseModel
        >>> class Q(BaseModel):
        ...     text: str
        >>> class A(BaseModel):
        ...     answer: str
        >>> step = Step(id="qa", input_model=Q, output_model=A, engine_name="local",
        ...             user_prompt="Question: {{ text }}")
    """

    kind = "step"
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None
    """The output model; None when the output is a union (see ``variants``)."""
    engine_name: str

    def __init__(
        self,
        id: str,
        input_model: type[BaseModel],
        output_model: type[BaseModel] | object,
        engine_name: str,
        *,
        name: str | None = None,
        sampling: SamplingParams | None = None,
        system_prompt: str = "",
        user_prompt: str,
        output_format_instruction: str | None = None,
        max_reasks: int = 2,
        write: bool = True,
        samples: int = 1,
        on_failure: OnFailure = "retry",
        emoji: str | None = None,
        policy: NodePolicy | None = None,
    ) -> None:
        self.id = check_id(id, "Step")
        self.policy = check_policy(policy, f"Step {id!r}")
        self.name = name or id
        if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
            raise ChainDefinitionError(
                f"Step {id!r}: input_model must be a pydantic BaseModel class, got {input_model!r}."
            )
        variants = _output_variants(output_model)
        if variants is None:
            raise ChainDefinitionError(
                f"Step {id!r}: output_model must be a pydantic BaseModel class or a union of them "
                "(Cat | Dog, typing.Union[Cat, Dog], or Annotated[Cat | Dog, Field(discriminator='kind')]), "
                f"got {output_model!r}."
            )
        if max_reasks < 0:
            raise ChainDefinitionError(f"Step {id!r}: max_reasks must be >= 0, got {max_reasks}.")
        if samples < 1:
            raise ChainDefinitionError(f"Step {id!r}: samples must be >= 1, got {samples}.")
        if on_failure not in FAILURE_BEHAVIOURS:
            raise ChainDefinitionError(
                f"Step {id!r}: on_failure must be one of {', '.join(map(repr, FAILURE_BEHAVIOURS))}, "
                f"got {on_failure!r}."
            )
        self.samples = samples
        self.on_failure: OnFailure = on_failure
        self.input_model = input_model
        self.output_type: Any = output_model
        """The output annotation as given: a model class, or a union of them."""
        self.variants: tuple[type[BaseModel], ...] = variants
        """The model classes an answer can be: one, or a union's members."""
        self.output_model = variants[0] if len(variants) == 1 else None
        self._adapter: TypeAdapter[Any] | None = (
            None if self.output_model else TypeAdapter(typing.cast(Any, output_model))
        )
        self.engine_name = engine_name
        self.sampling = sampling or SamplingParams()
        self.max_reasks = max_reasks
        self.write = write
        self.emoji = emoji
        self.json_schema: dict[str, Any] = (
            _union_schema(self._adapter) if self._adapter is not None else variants[0].model_json_schema()
        )
        if output_format_instruction is None:
            self.schema_instruction = schema_instruction(self.json_schema)
        else:
            schema_text = json.dumps(self.json_schema, separators=(",", ":"), ensure_ascii=False)
            self.schema_instruction = output_format_instruction.replace("{schema}", schema_text)
        self.system_template = self._compile("system_prompt", system_prompt)
        self.user_template = self._compile("user_prompt", user_prompt)
        system_text = self.system_template.constant
        self.fixed_system: str | None = None
        """The whole system message when it is the same for every record (no Jinja syntax in
        ``system_prompt``): the prompt and the schema instruction, joined once."""
        if system_text is not None:
            parts = [t for t in (system_text, self.schema_instruction) if t]
            self.fixed_system = "\n\n".join(parts)

    def _compile(self, which: str, source: str) -> Template:
        try:
            return Template(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"Step {self.id!r} {which} line {exc.lineno}: template syntax error: {exc.message}. "
                "Fix the Jinja2 syntax ({{ name }} for values, {% ... %} for logic)."
            ) from exc

    @property
    def streams(self) -> bool:
        return self.samples > 1

    @property
    def output_variants(self) -> tuple[type[BaseModel], ...]:
        return self.variants

    def validate_output(self, data: Any) -> BaseModel:
        """``data`` (parsed JSON) as the output model, or as the union's variant it matches.

        Raises:
            pydantic.ValidationError: When it fits no variant.
        """
        if self._adapter is None:
            return self.variants[0].model_validate(data)
        value: BaseModel = self._adapter.validate_python(data)
        return value

    def validate_output_json(self, text: str | bytes) -> BaseModel:
        """Like :meth:`validate_output` on JSON text, parsed and validated in one pass.

        Raises:
            pydantic.ValidationError: When the text is not JSON or fits no variant.
        """
        if self._adapter is None:  # the validator itself: model_validate_json's wrapper costs a third more
            output: BaseModel = self.variants[0].__pydantic_validator__.validate_json(text)
            return output
        value: BaseModel = self._adapter.validate_json(text)
        return value

    @property
    def reads_input_fields(self) -> bool:
        """The templates read a field of the step's own input (``{{ field }}``); if not, the record
        need not fit ``input_model`` (e.g. a step after a join reading only ``{{ alias.field }}``)."""
        fields = self.input_model.model_fields
        return any(
            ref.name in fields for t in (self.system_template, self.user_template) for ref in t.references
        )

    def check_self(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> None:
        """Its engine is known, its input fits (when its templates read it), no input field hides
        an earlier output, and every template reference can be read."""
        checker.check_engine(self, self.engine_name, f"Step {self.id!r}")
        checker.check_input(self, self.input_model, current, prev, reads=self.reads_input_fields)
        for name in self.input_model.model_fields:
            if name in scope:
                checker.add(
                    "warning",
                    self,
                    f"Step {self.id!r}: input field {name!r} of "
                    f"{self.input_model.__name__} shadows the earlier output {name!r} in templates; "
                    f"{{{{ {name} }}}} reads the field.",
                )
        for which, template in (("system_prompt", self.system_template), ("user_prompt", self.user_template)):
            for ref in template.references:
                check_reference(checker, self, f"Step {self.id!r} {which}", self.input_model, ref, scope)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "output_schema": self.json_schema,  # a union's schema too (its output_model is None)
            "engine": self.engine_name,
            "sampling": self.sampling.model_dump(mode="json"),
            "system_prompt": self.system_template.source,
            "user_prompt": self.user_template.source,
            "max_reasks": self.max_reasks,
            "samples": self.samples,
            "on_failure": self.on_failure,
        }


def _output_variants(output: Any) -> tuple[type[BaseModel], ...] | None:
    """The model classes a step's ``output_model`` annotation stands for: the class itself, or
    the members of a union of model classes (``A | B``, ``Union[A, B]``, the union inside
    ``Annotated[..., Field(discriminator=...)]``); None for anything else."""
    if isinstance(output, type) and issubclass(output, BaseModel):
        return (output,)
    hint = get_args(output)[0] if get_origin(output) is Annotated else output
    if get_origin(hint) not in (Union, UnionType):
        return None
    members = get_args(hint)
    if all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
        return tuple(members)
    return None


def _union_schema(adapter: TypeAdapter[Any]) -> dict[str, Any]:
    """A union's JSON schema (``anyOf``, or ``oneOf`` + ``discriminator`` + ``$defs``). With a
    discriminator, every variant lists that field as required: pydantic reads the tag before
    anything else, so an answer without it fails even when the field has a default (which
    would make the schema, and so a grammar built from it, call it optional)."""
    schema = adapter.json_schema()
    discriminator = schema.get("discriminator")
    if isinstance(discriminator, dict):
        tag = discriminator.get("propertyName")
        for ref in discriminator.get("mapping", {}).values():
            variant = schema.get("$defs", {}).get(str(ref).removeprefix("#/$defs/"))
            if tag and isinstance(variant, dict) and tag not in variant.setdefault("required", []):
                variant["required"].insert(0, tag)
    return schema
