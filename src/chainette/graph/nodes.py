"""The nodes a chain is made of: ``Step`` (one LLM call), ``Apply`` (a Python function),
``Branch`` (a named sequence run on a copy of each record, optionally joined back) and
``Parallel`` (sibling branches; an inner list in a chain is one).

Nodes only describe work; ``chainette.runtime`` decides how it runs. Every kind follows one
contract (:class:`Node`): it names its children, checks itself (with the helpers of
``graph.checks``) and describes itself for ``graph.json``; the runtime finds its runner by kind.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable, Iterator, Sequence
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import jinja2
from pydantic import BaseModel, TypeAdapter

from .._errors import ChainDefinitionError, TemplateError
from ..engines.base import SamplingParams
from ..io.layout import RESERVED_NAMES, is_reserved
from .policy import NodePolicy, check_policy
from .schema_prompt import schema_instruction
from .templates import Template
from .view import RecordView

if TYPE_CHECKING:
    from .checks import Checker, Scope

__all__ = ["Apply", "Branch", "Node", "Parallel", "Seq", "Step", "apply"]

OnFailure = Literal["retry", "stay", "emit"]
FAILURE_BEHAVIOURS: tuple[str, ...] = get_args(OnFailure)
_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _check_id(node_id: str, what: str) -> str:
    if not _ID_RE.fullmatch(node_id):
        bad = sorted({c for c in node_id if c not in _ID_CHARS}, key=node_id.index)
        if bad:
            problem = f"{', '.join(repr(c) for c in bad)} {'is' if len(bad) == 1 else 'are'} not allowed"
        else:
            problem = "it is empty" if not node_id else "it starts with a digit"
        raise ChainDefinitionError(
            f"{what} id {node_id!r} is not a valid identifier ({problem}). Templates reference it as "
            "{{ id.field }}, so an id may hold only ASCII letters (a-z, A-Z), digits (0-9) and "
            "underscores (_), not starting with a digit (e.g. 'qa_step', 'etape_1')."
        )
    if node_id.lower() == "input":
        raise ChainDefinitionError(
            f"{what} id {node_id!r} is reserved: {{{{ input.field }}}} reads the chain's input record."
        )
    if is_reserved(node_id):
        raise ChainDefinitionError(
            f"{what} id {node_id!r} is reserved: the run folder uses that name for its own files "
            f"(reserved: {', '.join(sorted(RESERVED_NAMES))}, in any case). Choose another id, "
            f"e.g. {node_id + '_step'!r}."
        )
    return node_id


class Node:
    """The contract every node kind follows.

    A node has an id, a display name and optional declared models. Containers (branches,
    groups, ...) list what they hold in :meth:`children`; the rest of the library walks the
    graph through that and never needs to know the kind:

    - :meth:`check` checks the node against what reaches it (``graph.checks`` calls it);
    - :meth:`layout` adds the node to ``graph.json``'s nodes and edges;
    - the runtime runs it with the runner registered for its class (or nearest base class).
    """

    kind: str = "node"
    id: str
    name: str
    input_model: type[BaseModel] | None
    output_model: type[BaseModel] | None
    write: bool = False
    """Write this node's outputs to ``<run>/<id>/``."""
    engine_name: str | None = None
    """The engine this node sends requests to (None: it sends none)."""
    fusable: bool = False
    """Cheap synchronous work: consecutive fusable nodes share one runtime stage."""
    passes_through: bool = False
    """The value after this node is the value before it (outputs go to the history only)."""
    whole_stream: bool = False
    """Works on the stream of records, not record by record (``take``, ``shuffle``): allowed at a
    chain's top level only; its runner has a ``flush`` for the end of the input."""
    policy: NodePolicy | None = None
    """How this node bounds, retries and validates each record's call (None: the defaults, no
    bound, no retry, everything validated); see :class:`~chainette.graph.policy.NodePolicy`."""

    def children(self) -> Sequence[Node]:
        """The nodes this one contains (none for a leaf)."""
        return ()

    counts_records: bool = False
    """A container that decides per record (a router, a loop, a map, a dialogue): it has its own
    stats and its output under its id, like a leaf."""

    @property
    def has_stats(self) -> bool:
        """Counts its own records (``metadata.json`` ``nodes``, a progress bar): every leaf, and
        containers that decide per record (:attr:`counts_records`)."""
        return self.counts_records or not self.children()

    _key: str | None = None

    @property
    def key(self) -> str:
        """The name of this node's output in a record's history, what templates read: its id,
        except inside a subflow, whose nodes keep their own chain's names (``qa``) while their
        ids are qualified by the subflow's (``review.qa``: stats, folders, failures, events)."""
        return self._key or self.id

    opens_scope: bool = False
    """Its children run with a history of their own (a subflow): the names they define neither
    clash with nor are visible to the chain around it."""

    def defines(self) -> list[str]:
        """The names this node adds to a record's history (what templates read); unique per chain."""
        return [self.key] if self.has_stats else []

    def placement(self) -> str | None:
        """For a container: where its nodes run, as error messages say it ("inside branch 'fr'");
        None when its nodes' outputs are visible after it like any earlier node's."""
        return None

    def walk(self) -> Iterator[Node]:
        """This node and everything inside it, depth first, in definition order."""
        yield self
        for child in self.children():
            yield from child.walk()

    def walk_scope(self) -> Iterator[Node]:
        """Like :meth:`walk`, but not into the children of a node that :attr:`opens_scope`: the
        nodes whose names share this node's namespace."""
        yield self
        if not self.opens_scope:
            for child in self.children():
                yield from child.walk_scope()

    def leaves(self) -> Iterator[Node]:
        """The nodes that do the work (no children): what has stats, folders and requests."""
        return (n for n in self.walk() if not n.children())

    @property
    def streams(self) -> bool:
        """Produces many outputs per input record, handed on in passes rather than all at once."""
        return False

    @property
    def output_variants(self) -> tuple[type[BaseModel], ...]:
        """The model classes the value after this node can be: ``(output_model,)``, none when
        unknown, several for a step whose output is a union (its ``output_model`` is then None)."""
        return () if self.output_model is None else (self.output_model,)

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        """Check this node; ``scope`` holds the outputs templates can read so far (updated in
        place with what this node adds). Returns the model of the value that goes on.

        A leaf checks itself (:meth:`check_self`) and adds its output under its id (a union's
        variants, when there are several); containers override this."""
        self.check_self(checker, scope, current, prev)
        variants = self.output_variants
        scope[self.key] = variants if len(variants) > 1 else self.output_model
        return self.output_model

    def check_self(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> None:
        """A leaf's own checks (default: its declared input fits what reaches it)."""
        checker.check_input(self, self.input_model, current, prev)

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Add this node to ``out["nodes"]`` / ``out["edges"]`` after ``previous``; return the ids
        the next node hangs from."""
        out["nodes"].append(self.describe())
        out["edges"].extend({"from": p, "to": self.id} for p in previous)
        return [self.id]

    def describe(self) -> dict[str, Any]:
        """What ``graph.json`` records about this node."""
        output = " | ".join(f"{v.__module__}.{v.__qualname__}" for v in self.output_variants)
        described: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "input_model": _model_name(self.input_model),
            "output_model": output or None,
            "input_schema": self.input_model.model_json_schema() if self.input_model else None,
            "output_schema": self.output_model.model_json_schema() if self.output_model else None,
        }
        if self.policy is not None:
            described["policy"] = self.policy.describe()
        return described

    def __or__(self, other: Node | list[Branch]) -> Seq:
        """``a | b | c``: the nodes in sequence (BatchFactory's composition); a :class:`Chain` takes
        the result as its steps: ``Chain("name", a | b | c)``."""
        return Seq([self, other])

    def __ror__(self, other: Node | list[Branch]) -> Seq:
        return Seq([other, self])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


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
        self.id = _check_id(id, "Step")
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
        checker.check_step(self, scope, current, prev)

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


class Apply(Node):
    """A Python function applied to each record, in order. Use :func:`apply` to build one.

    The function receives the record's current value (a model instance, or a dict when nothing
    declared a model), and, if it takes a second parameter, a :class:`RecordView` of the record
    (earlier outputs by id / alias, the chain's input, the record's id), and returns one value, a list of values (fan-out: each becomes its own
    record with id ``<parent>.<k>``; an empty list filters the record out) or ``None`` (filter).
    Filtered records are counted in ``metadata.json``; they are not failures.

    ``policy`` (a :class:`~chainette.graph.policy.NodePolicy`) bounds each call in time
    (``timeout_s``: a sync function then runs in a worker thread, abandoned when it runs over),
    retries a call that raised or ran over (``retries``, ``backoff``), and chooses what is
    validated: the value into ``input_model`` (``"input"``), what the function returns into
    ``output_model`` (``"output"``), both (default) or neither (``"none"``: values pass as they are).
    """

    kind = "apply"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        id: str | None = None,
        name: str | None = None,
        input_model: type[BaseModel] | None = None,
        output_model: type[BaseModel] | None = None,
        write: bool = False,
        policy: NodePolicy | None = None,
    ) -> None:
        if not callable(fn):
            raise ChainDefinitionError(f"apply() needs a callable, got {fn!r}.")
        fn_name = getattr(fn, "__name__", type(fn).__name__)
        self.fn = fn
        self.id = _check_id(id or re.sub(r"\W", "_", fn_name), "apply")
        self.policy = check_policy(policy, f"apply {self.id!r}")
        self.name = name or fn_name
        hinted_in, hinted_out = _models_from_hints(fn)
        self._hinted_variants = _return_variants(fn) if output_model is None and hinted_out is None else ()
        self.wants_record = _wants_record(fn)
        """The function takes a second parameter: it is passed a :class:`RecordView`."""
        self.input_model = input_model or hinted_in
        self.output_model = output_model or hinted_out
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self.write = write
        self.fusable = not self.is_async

    @property
    def output_variants(self) -> tuple[type[BaseModel], ...]:
        """``(output_model,)``, or the models a ``-> A | B`` return hint names."""
        return (self.output_model,) if self.output_model is not None else self._hinted_variants

    def check_self(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> None:
        checker.check_apply(self, current, prev)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "function": f"{getattr(self.fn, '__module__', '?')}.{self.name}"}


def apply(
    fn: Callable[..., Any],
    *,
    id: str | None = None,
    name: str | None = None,
    input_model: type[BaseModel] | None = None,
    output_model: type[BaseModel] | None = None,
    write: bool = False,
    policy: NodePolicy | None = None,
) -> Apply:
    """Wrap a Python function (sync or async) as a chain node.

    Input and output models are read from the function's type hints when not given; ``policy``
    (a :class:`~chainette.graph.policy.NodePolicy`) bounds, retries and validates each call.

    Example:
        >>> from pydantic import BaseModel
        >>> class Text(BaseModel):
        ...     text: str
        >>> def shout(t: Text) -> Text:
        ...     return Text(text=t.text.upper())
        >>> node = apply(shout)
        >>> node.id, node.output_model is Text
        ('shout', True)
    """
    return Apply(
        fn, id=id, name=name, input_model=input_model, output_model=output_model, write=write, policy=policy
    )


class Branch(Node):
    """A named sequence of nodes run on a copy of each record, in parallel with its siblings.

    Put branches in an inner list of a chain: ``Chain(steps=[a, [Branch(...), Branch(...)], b])``.
    An unjoined branch is a side output: its steps write their own folders and failures, and the
    main line goes on with the record as it was. ``Branch(...).join("alias")`` merges the
    branch's final output back into the record under ``alias`` (and its steps' outputs under
    their ids), so later templates can read ``{{ alias.field }}``; the record then continues
    only when every joined branch produced exactly one output for it. The alias may be the id
    of the branch's last step (``Branch("fr", [Step(id="fr", ...)]).join("fr")``): both name the
    same output. A branch may hold any node, inner lists of branches included (nesting).
    """

    kind = "branch"

    def __init__(
        self, name: str, steps: Sequence[Node | list[Branch]], *, join_alias: str | None = None
    ) -> None:
        self.id = _check_id(name, "Branch")
        self.name = name
        if not steps:
            raise ChainDefinitionError(f"Branch {name!r} has no steps.")
        self.steps: list[Node] = [
            as_node(node, f"Branch {name!r} steps[{i}]") for i, node in enumerate(spliced(list(steps)))
        ]
        self.join_alias = _check_id(join_alias, "join alias") if join_alias is not None else None
        self.input_model = self.steps[0].input_model
        self.output_model = self.steps[-1].output_model
        self.write = False

    def join(self, alias: str) -> Branch:
        """A copy of this branch whose final output merges back into the record under ``alias``."""
        return Branch(self.name, self.steps, join_alias=alias)

    @property
    def alias_is_last_step(self) -> bool:
        """The alias is the id of the branch's last step: one name for one output."""
        return self.join_alias is not None and self.join_alias == self.steps[-1].key

    def children(self) -> Sequence[Node]:
        return self.steps

    def defines(self) -> list[str]:
        return [self.join_alias] if self.join_alias and not self.alias_is_last_step else []

    def placement(self) -> str | None:
        return f"inside branch {self.name!r}" + ("" if self.join_alias else ", which is not joined")

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        """Checks the branch's nodes in a scope of its own; a joined branch then adds its nodes'
        outputs and its alias to ``scope``."""
        inner = dict(scope)
        out = checker.walk(self.steps, inner, current, prev, in_branch=True)
        if self.join_alias is not None:
            for node in self.walk():
                if node is not self and node.key in inner:
                    scope[node.key] = inner[node.key]
            scope[self.join_alias] = out
        return out

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        start = len(out["nodes"])
        last = previous
        for node in self.steps:
            last = node.layout(last, out)
        for entry in out["nodes"][start:]:
            if "branch" not in entry:  # the innermost branch names a node's place
                entry.update({"branch": self.name, "join_alias": self.join_alias})
        return last

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "join_alias": self.join_alias, "steps": [s.id for s in self.steps]}


class Parallel(Node):
    """Sibling branches run concurrently on copies of each record; joined ones merge back.

    ``Chain(steps=[a, [b1, b2], c])``: the inner list becomes ``Parallel([b1, b2])``. The record
    goes on as it came in, plus each joined branch's output under its alias.
    """

    kind = "parallel"
    passes_through = True

    def __init__(self, branches: Sequence[Branch], *, where: str = "Parallel") -> None:
        if not branches or not all(isinstance(b, Branch) for b in branches):
            raise ChainDefinitionError(
                f"{where}: an inner list must hold Branch objects, got {list(branches)!r}."
            )
        self.branches = list(branches)
        names = [b.name for b in self.branches]
        if len(set(names)) < len(names):
            raise ChainDefinitionError(f"{where}: branch names must be unique, got {', '.join(names)}.")
        self.id = "parallel(" + ",".join(names) + ")"  # never a template name or a folder
        self.name = " | ".join(names)
        self.input_model = self.branches[0].input_model
        self.output_model = None

    def children(self) -> Sequence[Node]:
        return self.branches

    @property
    def joined(self) -> list[Branch]:
        return [b for b in self.branches if b.join_alias is not None]

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        entry = dict(scope)
        for branch in self.branches:  # siblings run side by side: none reads another's outputs
            view = dict(entry)
            branch.check(checker, view, current, prev)
            scope.update((k, v) for k, v in view.items() if k not in entry)
        for branch in self.joined:
            for node in branch.walk():
                checker.placement.pop(node.key, None)
        return current  # the record goes on with the value it came in with

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        ends: list[str] = []
        for branch in self.branches:
            last = branch.layout(previous, out)
            if branch.join_alias:
                ends.extend(last)
        return previous + ends if ends else previous

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "branches": [b.name for b in self.branches]}


class Seq(Node):
    """Nodes in sequence, as ``a | b | c`` builds them: the same as listing them in order.

    A chain or branch splices a sequence into its own steps; anywhere else that takes one node
    (a loop body, a route) it runs its nodes in order on each record. It iterates over its nodes,
    so ``Chain("name", a | b | c)`` works.

    Example:
        >>> from chainette import apply
        >>> def one(x: dict) -> dict:
        ...     return x
        >>> def two(x: dict) -> dict:
        ...     return x
        >>> [n.id for n in apply(one) | apply(two)]
        ['one', 'two']
    """

    kind = "sequence"
    nodes: list[Node]

    def __init__(self, nodes: Sequence[Any]) -> None:
        items: list[Node] = []
        for k, item in enumerate(nodes):
            node = as_node(item, f"a | b sequence item {k}")
            items.extend(node.nodes if isinstance(node, Seq) else [node])
        self.nodes = items
        self.id = "seq(" + ",".join(n.id for n in items) + ")"  # never a template name or a folder
        self.name = " | ".join(n.name for n in items)
        self.input_model = items[0].input_model
        self.output_model = items[-1].output_model

    def __or__(self, other: Node | list[Branch]) -> Seq:
        return Seq([*self.nodes, other])

    def __ror__(self, other: Node | list[Branch]) -> Seq:
        return Seq([other, *self.nodes])

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def children(self) -> Sequence[Node]:
        return self.nodes

    @property
    def passes_through(self) -> bool:  # type: ignore[override]
        return all(n.passes_through for n in self.nodes)

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        return checker.walk(self.nodes, scope, current, prev, in_branch=True)

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        for node in self.nodes:
            previous = node.layout(previous, out)
        return previous


def spliced(items: Sequence[Any]) -> list[Any]:
    """``items`` with every :class:`Seq` among them replaced by its nodes."""
    out: list[Any] = []
    for item in items:
        out.extend(item.nodes if isinstance(item, Seq) else [item])
    return out


def as_node(item: Any, where: str) -> Node:
    """A chain or branch item as a node: a node as is, a list of branches (or one branch) as a
    :class:`Parallel` group."""
    if isinstance(item, list):
        return Parallel(item, where=where)
    if isinstance(item, Branch):
        return Parallel([item], where=where)
    if isinstance(item, Node):
        return item
    from .chain import ChainGraph  # here: chain.py imports this module

    if isinstance(item, ChainGraph):  # a chain inside a chain: a subflow under the chain's name
        if not _ID_RE.fullmatch(item.name):
            raise ChainDefinitionError(
                f"{where}: chain {item.name!r} is used as a node, and its name is not a valid id; "
                "give it one with chain.as_node('some_id')."
            )
        return item.as_node()
    raise ChainDefinitionError(
        f"{where}: expected a Step, apply(...), a Chain (a subflow) or a list of Branch, got {item!r}."
    )


def _signature_target(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What to read hints and parameters from: the function, or a callable object's ``__call__``."""
    return fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004


def _wants_record(fn: Callable[..., Any]) -> bool:
    """``def f(value, record)``: a second positional parameter without a default (or annotated
    ``RecordView``) receives the record's context."""
    target = _signature_target(fn)
    try:
        params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):  # builtins without a signature: one argument
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return False
    second = positional[1]
    hinted = second.annotation in (RecordView, "RecordView")
    return hinted or second.default is inspect.Parameter.empty


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


def _model_name(model: type[BaseModel] | None) -> str | None:
    return None if model is None else f"{model.__module__}.{model.__qualname__}"


def _return_variants(fn: Callable[..., Any]) -> tuple[type[BaseModel], ...]:
    """The models ``def f(x) -> A | B`` may return, when there are several (a router keyed by
    model classes after it checks that each has a route)."""
    try:
        hint = typing.get_type_hints(_signature_target(fn)).get("return")
    except Exception:  # unresolved forward references: no variants known
        return ()
    models = _models_in(hint)
    return models if len(models) > 1 else ()


def _models_from_hints(fn: Callable[..., Any]) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """Input/output models from ``def f(x: In) -> Out | list[Out] | None`` hints, when present."""
    target = _signature_target(fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolved forward references: hints are optional, fall back to none
        return None, None
    params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    first = hints.get(params[0].name) if params else None
    return _as_model(first), _as_model(hints.get("return"))


def _as_model(hint: Any) -> type[BaseModel] | None:
    models = _models_in(hint)
    return models[0] if len(models) == 1 else None


def _models_in(hint: Any) -> tuple[type[BaseModel], ...]:
    """The model classes a hint names, in order: ``Out``, ``Out | None``, ``list[Out]`` → ``(Out,)``;
    ``A | B`` (or ``list[A | B]``) → ``(A, B)``; anything else → ``()``."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return (hint,)
    if get_origin(hint) is None:
        return ()
    found = [m for a in get_args(hint) if a is not type(None) for m in _models_in(a)]
    return tuple(dict.fromkeys(found))
