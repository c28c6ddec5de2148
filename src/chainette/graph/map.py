"""``Map``: run a body of nodes over each item of a list a record holds, then collect the outputs
back into that record (BatchFactory's ``SpawnFromList`` + ``CollectAllToList``, PenguiFlow's
``join_k``).

Each item becomes a child record ``<parent id>/<k>`` that sees the parent's earlier outputs and
``{{ input.x }}``; the body runs over the children with the usual runners (its steps write their
own folders, use the ledger, write failures). When every child is done, the parent goes on
unchanged with ``history[<map id>]`` = a :class:`Collected` model: ``{{ <map id>.items }}``. The
body's own outputs are not visible after the map.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from collections.abc import Sequence as AbcSequence
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, create_model

from .._errors import ChainDefinitionError
from .contract import Checker, Node, Scope, as_node
from .hints import unwrap_optional, wants_record
from .ids import check_id

__all__ = ["Collected", "Map"]

OnChildFailure = Literal["fail", "skip", "partial"]
CHILD_FAILURE_BEHAVIOURS: tuple[str, ...] = get_args(OnChildFailure)
_LISTS = (list, tuple, AbcSequence)
_SCALARS: tuple[object, ...] = (str, int, float, bool, bytes)


class Collected(BaseModel):
    """What a :class:`Map` puts under its id: the body's outputs for every item, in item order.

    Each ``Map`` makes its own subclass (``<Id>Collected``) whose ``items`` holds the body's
    output model, so ``{{ map_id.items }}`` is checked and typed.
    """

    items: list[Any] = Field(default_factory=list, description="The body's outputs, in item order.")
    total: int = Field(0, description="Children spawned: the length of the list.")
    failed: list[int] = Field(default_factory=list, description="Positions of the children that failed.")
    filtered: int = Field(0, description="Children the body filtered out (no output, not a failure).")
    skipped: int = Field(0, description="Children not run because join_k successes came first.")
    errors: dict[int, str] = Field(default_factory=dict, description="Failed child position → reason.")


class Map(Node):
    """Spawn one child record per item of a list, run ``body`` over them, collect the outputs.

    Args:
        id: The map's id: later templates read ``{{ id.items }}`` (and ``total``, ``failed``,
            ``filtered``, ``skipped``, ``errors``; see :class:`Collected`).
        body: A node or a list of nodes (an inner list is a group of parallel branches, as in a
            chain) run over each child.
        over: The name of a list field of the current value, or ``fn(value)`` /
            ``fn(value, record: RecordView)`` returning the list.
        item_field: A model or dict item is the child's value as is; any other item (a string,
            a number) is wrapped as ``{item_field: item}``. Default: the one field of the body's
            first input model, when it has exactly one.
        join_k: Collect as soon as ``k`` children succeeded: children run in item order and no
            further child of that record is started; the rest are counted in ``skipped``.
        on_child_failure: ``"fail"`` (default: the record fails, naming the first failed child
            and its reason), ``"skip"`` (failed children are left out of ``items``) or
            ``"partial"`` (a ``None`` in ``items`` at each failed child's place). Failed children
            are always written to ``failures.jsonl`` too, with ``_parent`` set.
        child_batch: Children per sub-chunk handed to the body.
        concurrency: Sub-chunks in flight at once (per chunk of records): with ``child_batch``,
            the bound on children alive, whatever the list lengths.
        input_model: The model of the records the map takes (optional): declare it when the map
            comes first in a chain, so inputs are validated into it and ``over`` is checked.
        name: Display name (defaults to ``id``).

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import Map, apply
        >>> class Chapter(BaseModel):
        ...     paragraphs: list[str]
        >>> class Para(BaseModel):
        ...     text: str
        >>> class Count(BaseModel):
        ...     words: int
        >>> def count(p: Para) -> Count:
        ...     return Count(words=len(p.text.split()))
        >>> counts = Map("counts", apply(count), over="paragraphs")
        >>> counts.item_field, counts.output_model.__name__
        ('text', 'CountsCollected')
    """

    kind = "map"
    counts_records = True
    passes_through = True
    output_model: type[Collected]

    def __init__(
        self,
        id: str,
        body: Node | Sequence[Any],
        *,
        over: str | Callable[..., Any],
        item_field: str | None = None,
        join_k: int | None = None,
        on_child_failure: OnChildFailure = "fail",
        child_batch: int = 64,
        concurrency: int = 4,
        input_model: type[BaseModel] | None = None,
        name: str | None = None,
    ) -> None:
        self.id = check_id(id, "Map")
        self.name = name or id
        nodes = list(body) if isinstance(body, (list, tuple)) else [body]
        if not nodes:
            raise ChainDefinitionError(
                f"Map {id!r} has an empty body: give it the node(s) each item runs through."
            )
        self.body: list[Node] = [as_node(n, f"Map {id!r} body[{i}]") for i, n in enumerate(nodes)]
        if not (callable(over) or isinstance(over, str)):
            raise ChainDefinitionError(
                f"Map {id!r}: over must name a list field of the value (over='paragraphs') or be "
                f"fn(value) returning the list, got {over!r}."
            )
        for label, number in (("child_batch", child_batch), ("concurrency", concurrency), ("join_k", join_k)):
            if number is not None and (not isinstance(number, int) or number < 1):
                raise ChainDefinitionError(f"Map {id!r}: {label} must be an integer >= 1, got {number!r}.")
        if on_child_failure not in CHILD_FAILURE_BEHAVIOURS:
            raise ChainDefinitionError(
                f"Map {id!r}: on_child_failure must be one of "
                f"{', '.join(map(repr, CHILD_FAILURE_BEHAVIOURS))}, got {on_child_failure!r}."
            )
        self.over = over
        self.over_wants_record = callable(over) and wants_record(over)
        self.join_k = join_k
        self.on_child_failure: OnChildFailure = on_child_failure
        self.child_batch = child_batch
        self.concurrency = concurrency
        item_fields = list(self.item_model.model_fields) if self.item_model is not None else []
        if item_field is not None and self.item_model is not None and item_field not in item_fields:
            raise ChainDefinitionError(
                f"Map {id!r}: item_field={item_field!r} is not a field of {self.item_model.__name__}, the "
                f"body's input (fields: {', '.join(item_fields)})."
            )
        self.item_field = item_field or (item_fields[0] if len(item_fields) == 1 else None)
        self.input_model = input_model
        self.output_model = _collected_model(id, self._body_output(), partial=on_child_failure == "partial")

    @property
    def item_model(self) -> type[BaseModel] | None:
        """The model each child is validated into: the body's first input model."""
        return self.body[0].input_model

    def _body_output(self) -> type[BaseModel] | None:
        for node in reversed(self.body):
            if not node.passes_through:
                return node.output_model
        return self.item_model

    def children(self) -> Sequence[Node]:
        return self.body

    def placement(self) -> str | None:
        return (
            f"inside map {self.id!r} (once per item; read the collected outputs after it as "
            f"{{{{ {self.id}.items }}}})"
        )

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        """Checks ``over`` against the current model and the body in a scope of its own that sees
        the earlier outputs; after the map only ``<id>`` (the collected model) is visible."""
        checker.check_input(self, self.input_model, current, prev)
        current = current or self.input_model
        element = self._check_over(checker, current)
        start = element if isinstance(element, type) and issubclass(element, BaseModel) else self.item_model
        checker.walk(self.body, dict(scope), start, self, in_branch=True)
        scope[self.key] = self.output_model
        return current  # the record goes on with the value it came in with

    def _check_over(self, checker: Checker, current: type[BaseModel] | None) -> Any:
        """The type of the list's items when ``over`` names a field of a known model, else None."""
        if not isinstance(self.over, str) or current is None:
            return None
        fields = current.model_fields
        if self.over not in fields:
            close = difflib.get_close_matches(self.over, list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            checker.add(
                "error",
                self,
                f"Map {self.id!r}: over={self.over!r} is not a field of {current.__name__} (fields: "
                f"{', '.join(fields) or 'none'}).{hint} Name a list field, or pass over=fn(value) returning the list.",
            )
            return None
        annotation = unwrap_optional(fields[self.over].annotation)
        if get_origin(annotation) not in _LISTS and annotation not in _LISTS:
            shown = getattr(annotation, "__name__", str(annotation))
            checker.add(
                "error",
                self,
                f"Map {self.id!r}: over={self.over!r} is {current.__name__}.{self.over} ({shown}), not a list. "
                "Name a list field, or pass over=fn(value) returning the list.",
            )
            return None
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        element = args[0] if args else Any
        if element in _SCALARS and self.item_field is None:
            shown = getattr(element, "__name__", str(element))
            wanted = self.item_model
            fields_text = f" (fields: {', '.join(wanted.model_fields)})" if wanted is not None else ""
            checker.add(
                "error",
                self,
                f"Map {self.id!r}: the items of {current.__name__}.{self.over} are {shown}, not models, and "
                f"the body's input {wanted.__name__ if wanted else '(undeclared)'}{fields_text} has no single "
                "field to put each one in: pass item_field='<field>'.",
            )
        return element

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        """The map node, its body (edge ``each`` into it, ``collect`` from its end back to the
        map), drawn inside the map; the next node hangs from the map."""
        out["nodes"].append(self.describe())
        out["edges"].extend({"from": p, "to": self.id} for p in previous)
        first_node, first_edge = len(out["nodes"]), len(out["edges"])
        last = [self.id]
        for node in self.body:
            last = node.layout(last, out)
        for edge in out["edges"][first_edge:]:
            if edge["from"] == self.id:
                edge["label"] = "each"
        out["edges"].extend({"from": end, "to": self.id, "label": "collect"} for end in last)
        for entry in out["nodes"][first_node:]:
            entry.setdefault("parent", self.id)  # an inner map already named its own
        return [self.id]

    def describe(self) -> dict[str, Any]:
        over = self.over if isinstance(self.over, str) else getattr(self.over, "__name__", "function")
        return {
            **super().describe(),
            "body": [n.id for n in self.body],
            "over": over,
            "item_field": self.item_field,
            "join_k": self.join_k,
            "on_child_failure": self.on_child_failure,
            "child_batch": self.child_batch,
            "concurrency": self.concurrency,
        }


def _collected_model(map_id: str, output: type[BaseModel] | None, *, partial: bool) -> type[Collected]:
    """``<Id>Collected``: :class:`Collected` with ``items`` typed by the body's output model."""
    item: Any = Any if output is None else (output | None if partial else output)
    name = "".join(part[:1].upper() + part[1:] for part in re.split(r"_+", map_id) if part) + "Collected"
    model: type[Collected] = create_model(
        name or "MapCollected",
        __base__=Collected,
        __module__=__name__,
        items=(list[item], Field(default_factory=list, description="The body's outputs, in item order.")),
    )
    return model
