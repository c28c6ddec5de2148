"""The node contract, at the bottom of ``graph/``: :class:`Node` (what every kind is),
:class:`Checker` and :data:`Scope` (what a node checks itself with), :class:`Seq` (``a | b``) and
:func:`as_node` (a chain's items as nodes), and :class:`ChainBase` (what the nodes know of a chain).

Nodes only describe work; ``chainette.runtime`` decides how it runs. Every kind follows one
contract: it names its children, checks itself and describes itself for ``graph.json``; the
runtime finds its runner by kind. This module imports no kind and no chain: the kinds
(``step.py``, ``apply.py``, ``branch.py``, ``router.py``, ...) import it, the chain imports them.
An inner list of branches becomes one node through its first item's class (:meth:`Node.group`,
which ``Branch`` answers), and a chain inside a chain through :meth:`ChainBase.as_node`.
"""

from __future__ import annotations

import functools
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from .._errors import ChainDefinitionError, IncompatibleStepsError, UnknownEngineError
from ..engines.registry import is_registered, unknown_engine_message
from .hints import input_variants
from .ids import ID_RE
from .issues import CheckReport, Issue
from .policy import NodePolicy

__all__ = ["ChainBase", "Checker", "Node", "Scope", "Seq", "as_node", "spliced"]

Scope = dict[str, "type[BaseModel] | tuple[type[BaseModel], ...] | None"]
"""Names templates can read → the model of the output (a tuple: a union step's variants; None:
unknown, checked per record)."""


class Node:
    """The contract every node kind follows.

    A node has an id, a display name and optional declared models. Containers (branches,
    groups, ...) list what they hold in :meth:`children`; the rest of the library walks the
    graph through that and never needs to know the kind:

    - :meth:`check` checks the node against what reaches it (the :class:`Checker` calls it);
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
    writes_to: str | None = None
    """A file this node's rows go to instead of ``<run>/<id>/`` (a ``Sink``): a file name in the
    run folder, or an absolute path; the run writer opens it when the run starts."""
    whole_stream: bool = False
    """Works on the stream of records, not record by record (``take``, ``shuffle``): allowed at a
    chain's top level only; its runner has a ``flush`` for the end of the input."""
    policy: NodePolicy | None = None
    """How this node bounds, retries and validates each record's call (None: the defaults, no
    bound, no retry, everything validated); see :class:`~chainette.graph.policy.NodePolicy`."""

    def children(self) -> Sequence[Node]:
        """The nodes this one contains (none for a leaf)."""
        return ()

    stands_alone: bool = True
    """Stands as an item of a chain as it is; False for a kind that stands in a group of its own
    (a ``Branch`` alone in a chain is a parallel group of one): see :meth:`group`."""

    @classmethod
    def group(cls, items: list[Any], where: str) -> Node:
        """The node an inner list of a chain stands for, when its first item is of this class:
        ``Branch`` answers with a parallel group; any other kind cannot head one."""
        raise ChainDefinitionError(f"{where}: an inner list must hold Branch objects, got {list(items)!r}.")

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

    def variant_advice(self) -> str | None:
        """When the value after this node may be one of several models (:attr:`output_variants`)
        and each must fit what comes next: what to do when one does not (None: fit checked per
        record at run time, a warning)."""
        return None

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

    def __or__(self, other: Node | list[Any]) -> Seq:
        """``a | b | c``: the nodes in sequence (BatchFactory's composition); a :class:`Chain` takes
        the result as its steps: ``Chain("name", a | b | c)``."""
        return Seq([self, other])

    def __ror__(self, other: Node | list[Any]) -> Seq:
        return Seq([other, self])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


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

    def __or__(self, other: Node | list[Any]) -> Seq:
        return Seq([*self.nodes, other])

    def __ror__(self, other: Node | list[Any]) -> Seq:
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
    parallel group (:meth:`Node.group`), a chain as a subflow (:meth:`ChainBase.as_node`)."""
    if isinstance(item, list):
        head = item[0] if item else None
        return (type(head) if isinstance(head, Node) else Node).group(item, where)
    if isinstance(item, Node):
        return item if item.stands_alone else type(item).group([item], where)
    if isinstance(item, ChainBase):  # a chain inside a chain: a subflow under the chain's name
        if not ID_RE.fullmatch(item.name):
            raise ChainDefinitionError(
                f"{where}: chain {item.name!r} is used as a node, and its name is not a valid id; "
                "give it one with chain.as_node('some_id')."
            )
        return item.as_node()
    raise ChainDefinitionError(
        f"{where}: expected a Step, apply(...), a Chain (a subflow) or a list of Branch, got {item!r}."
    )


class ChainBase(ABC):
    """What the nodes and the checker know of a chain: its name, its nodes in order, and how it
    stands as one node of another (a subflow). ``graph.chain.ChainGraph`` is the chain; it sits
    above every kind, so they know it by this."""

    name: str
    items: list[Node]
    declared_input: Any = None
    """``Chain(input_model=...)``: a model or a union of models; None: the first node says."""

    @property
    def input_type(self) -> Any:
        """What each input record is validated into: the declared ``input_model`` (a model, or a
        union of models: ``A | B``, ``Union[A, B]``, ``Annotated[A | B, Field(discriminator=...)]``);
        else a first router keyed by model classes (and no ``by``) takes the union of its classes;
        else the first node's input model (None: any value)."""
        if self.declared_input is not None:
            return self.declared_input
        first = self.items[0]
        keyed = [getattr(r, "model", None) for r in first.children()] if first.kind == "router" else []
        if keyed and all(keyed) and getattr(first, "by", "") is None:
            return functools.reduce(operator.or_, keyed)  # A | B | ...
        return first.input_model

    @property
    def input_model(self) -> type[BaseModel] | None:
        """The model each input record is validated into, when it is one model (None for a union:
        see :attr:`input_type` and :attr:`input_variants`)."""
        tp = self.input_type
        return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None

    @property
    def input_variants(self) -> tuple[type[BaseModel], ...]:
        """The model classes an input record may be (several for a union input; none when any value)."""
        return input_variants(self.input_type) or ()

    @abstractmethod
    def as_node(self, id: str | None = None, *, name: str | None = None) -> Node:
        """This chain as one node of another chain (a subflow), under ``id`` (default: its name)."""


class Checker:
    """Walks the chain, letting each node check itself (:meth:`Node.check`); holds the report and
    the shared checks node kinds use (inputs, engines; template references: ``graph.references``)."""

    def __init__(
        self,
        chain: ChainBase,
        check_engines: bool = True,
        engine_known: Callable[[str], bool] = is_registered,
    ) -> None:
        self.report = CheckReport()
        self.check_engines = check_engines
        self.engine_known = engine_known
        self.placement: dict[str, str] = self.places(chain.items)
        """Names not yet in scope → where they run (for a precise error message)."""

    def places(self, items: list[Node]) -> dict[str, str]:
        """Where the nodes of ``items`` run, by the name templates read them as (not into a
        node that opens a scope of its own: a subflow's names are its own)."""
        out: dict[str, str] = {}

        def place(node: Node, where: str | None) -> None:
            if not node.children():
                out.setdefault(node.key, where or "later in the chain")
            elif not node.opens_scope:
                for child in node.children():
                    place(child, node.placement() or where)

        for item in items:
            place(item, None)
        return out

    def add(
        self,
        level: Literal["error", "warning"],
        node: Node,
        message: str,
        error_type: type[ChainDefinitionError] = ChainDefinitionError,
    ) -> None:
        self.report.issues.append(Issue(level, node.id, message, error_type))

    def check_engine(self, node: Node, engine_name: str, where: str) -> None:
        """An error when ``engine_name`` (what ``where`` sends requests to) is not known."""
        if self.check_engines and not self.engine_known(engine_name):
            self.add("error", node, unknown_engine_message(engine_name, where), UnknownEngineError)

    def walk(
        self,
        items: list[Node],
        scope: Scope,
        current: type[BaseModel] | None,
        prev: Node | None,
        *,
        in_branch: bool = False,
    ) -> type[BaseModel] | None:
        """Check ``items`` in order; returns the model of the value that comes out of the last."""
        for node in items:
            current = node.check(self, scope, current, prev)
            prev = prev if node.passes_through else node
            if not in_branch and not node.children():  # containers release what they make visible
                self.placement.pop(node.key, None)
        return current

    def _check_variants_fit(self, node: Node, wanted: type[BaseModel], prev: Node) -> None:
        """Every model ``prev`` may hand on has the required fields of ``wanted`` (an error
        naming the one that lacks them and ``prev``'s advice otherwise)."""
        variants = prev.output_variants
        union = " | ".join(v.__name__ for v in variants)
        for variant in variants:
            if issubclass(variant, wanted):
                continue
            have = variant.model_fields
            missing = [n for n, f in wanted.model_fields.items() if f.is_required() and n not in have]
            if missing:
                self.add(
                    "error",
                    node,
                    f"{node.kind} {node.id!r} needs {wanted.__name__}, but {prev.kind} {prev.id!r} may hand "
                    f"on {variant.__name__} (one of {union}), which lacks required field(s) "
                    f"{', '.join(repr(m) for m in missing)}. {prev.variant_advice()}",
                    IncompatibleStepsError,
                )

    def check_input(
        self,
        node: Node,
        wanted: type[BaseModel] | None,
        current: type[BaseModel] | None,
        prev: Node | None,
        *,
        reads: bool = True,
    ) -> None:
        """Can ``wanted`` (the node's declared input) be built from ``current`` (what reaches it)?"""
        if wanted is None:
            return
        if current is None:
            if prev is not None and prev.variant_advice() is not None and len(prev.output_variants) > 1:
                self._check_variants_fit(node, wanted, prev)
                return
            if prev is not None:
                variants = prev.output_variants
                known = (
                    f"the output of {prev.id!r} is one of {' | '.join(v.__name__ for v in variants)}"
                    if len(variants) > 1
                    else f"the output type of {prev.id!r} is unknown"
                )
                self.add(
                    "warning",
                    node,
                    f"{node.kind} {node.id!r}: {known}, so its fit to {wanted.__name__} is checked per "
                    "record at run time.",
                )
            return
        if current is wanted or issubclass(current, wanted):
            return
        have = current.model_fields
        missing = [n for n, f in wanted.model_fields.items() if f.is_required() and n not in have]
        source = f"{prev.id!r} outputs" if prev is not None else "the chain input is"
        if missing and not reads:
            self.add(
                "warning",
                node,
                f"{node.kind} {node.id!r} declares input {wanted.__name__} but {source} {current.__name__}; "
                "its templates read no field of its input (only earlier outputs), so the record is not "
                "validated into it.",
            )
        elif missing:
            self.add(
                "error",
                node,
                (
                    f"{node.kind} {node.id!r} needs {wanted.__name__} but {source} {current.__name__}, which lacks "
                    f"required field(s) {', '.join(repr(m) for m in missing)} (it has: {', '.join(have)}). "
                    "Change the input model, or add an apply(...) step that converts between them."
                ),
                IncompatibleStepsError,
            )


def _model_name(model: type[BaseModel] | None) -> str | None:
    return None if model is None else f"{model.__module__}.{model.__qualname__}"
