"""``Router``: each record takes one of several named routes (PenguiFlow's ``predicate_router`` /
``union_router``, BatchFactory's ``If``), and the main line goes on with that route's output.

A route is chosen by a function of the record (``by=fn``; it may also take a :class:`RecordView`),
by a field of the current value (``by="kind"``, e.g. a ``Literal`` discriminator), or, when the
routes are keyed by model classes, by the variant the value is (``isinstance``). A record that
matches no route goes to ``default``, or is filtered, or fails with the reason
(``on_no_match``); never lost. With ``fan_out=True`` ``by`` may name several routes: the record
takes each, as ``<id>.<route>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel

from .._errors import ChainDefinitionError
from .branch import Branch
from .contract import Checker, Node, Scope
from .hints import wants_record
from .ids import check_id

__all__ = ["Route", "Router"]

NoMatch = Literal["fail", "filter", "pass"]
RouteKey = str | type[BaseModel]


class Route(Branch):
    """One way through a :class:`Router`: a named sequence of nodes. ``model`` is the variant
    that selects it when the routes are keyed by model classes."""

    kind = "route"

    def __init__(self, name: str, steps: Sequence[Any], *, router: str, model: type[BaseModel] | None = None):
        super().__init__(name, steps)
        self.router = router
        self.model = model

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        """As a branch's, but its nodes name the router and the route (drawn as a route that
        goes on down the main line, not as a side output)."""
        start = len(out["nodes"])
        last = previous
        for node in self.steps:
            last = node.layout(last, out)
        for entry in out["nodes"][start:]:
            if "branch" not in entry:  # the innermost branch or route names a node's place
                entry.update(
                    {"branch": self.name, "join_alias": None, "router": self.router, "route": self.name}
                )
        return last

    def placement(self) -> str | None:
        return (
            f"inside route {self.name!r} of router {self.router!r} (only the records routed there have it; "
            f"read the router's output as {{{{ {self.router}.field }}}})"
        )


class Router(Node):
    """Send each record down one of several routes; the route's output goes on as ``<id>``.

    Args:
        id: The router's id: later templates read the chosen route's output as ``{{ id.field }}``.
        routes: Route name (or model class) → a node or a list of nodes.
        by: ``fn(value) -> name`` (or ``fn(value, record)``; a list of names with ``fan_out``;
            ``None`` for no match), or the name of a field of the value holding the route name.
            Leave it out when the routes are keyed by model classes: the value's class decides.
        default: The route for a record that matches none.
        on_no_match: Without a default: ``"fail"`` (the record goes to failures.jsonl with the
            reason; default), ``"filter"`` (dropped and counted as filtered) or ``"pass"`` (it goes
            on unchanged, as if through an empty route: an "if" without an "else"; what follows
            must take both the routes' output and the unchanged record).
        fan_out: ``by`` may return several routes; the record takes each, with id ``<id>.<route>``.

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import Router, apply
        >>> class Ticket(BaseModel):
        ...     text: str
        ...     urgent: bool
        >>> def page(t: Ticket) -> Ticket:
        ...     return t
        >>> def queue(t: Ticket) -> Ticket:
        ...     return t
        >>> triage = Router("triage", {"page": apply(page), "queue": apply(queue)},
        ...                 by=lambda t: "page" if t.urgent else "queue")
        >>> [r.name for r in triage.routes]
        ['page', 'queue']
    """

    kind = "router"
    counts_records = True

    def __init__(
        self,
        id: str,
        routes: Mapping[RouteKey, Node | Sequence[Any]],
        *,
        by: Callable[..., Any] | str | None = None,
        default: RouteKey | None = None,
        on_no_match: NoMatch = "fail",
        fan_out: bool = False,
        name: str | None = None,
    ) -> None:
        self.id = check_id(id, "Router")
        self.name = name or id
        if not routes:
            raise ChainDefinitionError(f"Router {id!r} has no routes.")
        self.routes: list[Route] = []
        for key, nodes in routes.items():
            model = key if isinstance(key, type) and issubclass(key, BaseModel) else None
            route_name = model.__name__ if model is not None else key
            if not isinstance(route_name, str):
                raise ChainDefinitionError(
                    f"Router {id!r}: a route is keyed by a name or a pydantic model class, got {key!r}."
                )
            steps = list(nodes) if isinstance(nodes, (list, tuple)) else [nodes]
            self.routes.append(Route(route_name, steps, router=id, model=model))
        by_class = [r.model is not None for r in self.routes]
        if by is None and not all(by_class):
            raise ChainDefinitionError(
                f"Router {id!r}: say how a route is chosen: by=fn(value) -> route name, by='field' (a field "
                "of the value holding the route name), or key every route by a model class."
            )
        if on_no_match not in get_args(NoMatch):
            raise ChainDefinitionError(
                f"Router {id!r}: on_no_match must be 'fail', 'filter' or 'pass', got {on_no_match!r}."
            )
        self.by = by
        self.by_wants_record = callable(by) and wants_record(by)
        self.default = None if default is None else self._name_of(default)
        self.on_no_match: NoMatch = on_no_match
        self.fan_out = fan_out
        inputs = {r.input_model for r in self.routes if r.model is None}
        self.input_model = inputs.pop() if len(inputs) == 1 and not any(by_class) else None
        outputs = {r.output_model for r in self.routes}
        if self.passes_unmatched:  # the unchanged record is one more way through
            outputs.add(self.input_model)
        self.output_model = outputs.pop() if len(outputs) == 1 else None
        self._variants: tuple[type[BaseModel], ...] = ()  # what may go on (set by check)

    @property
    def passes_unmatched(self) -> bool:
        """A record that matches no route goes on unchanged (``on_no_match="pass"``, no default)."""
        return self.on_no_match == "pass" and self.default is None

    @property
    def output_variants(self) -> tuple[type[BaseModel], ...]:
        return self._variants or super().output_variants

    def variant_advice(self) -> str | None:
        if not self.passes_unmatched:
            return None
        return (
            f"Records that match no route of router {self.id!r} go on unchanged: make every route end in "
            "a model that fits what comes next (the one it came in with, say), convert with an apply(...) "
            "after the router, or give the router a default= route."
        )

    def _name_of(self, key: RouteKey) -> str:
        name = key.__name__ if isinstance(key, type) else key
        if name not in self.route_names:
            raise ChainDefinitionError(
                f"Router {self.id!r}: default {name!r} is not one of its routes ({', '.join(self.route_names)})."
            )
        return name

    @property
    def route_names(self) -> list[str]:
        return [r.name for r in self.routes]

    def children(self) -> Sequence[Node]:
        return self.routes

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        union = prev if prev is not None and self.by is None and len(prev.output_variants) > 1 else None
        if union is not None:  # right after a union step, routed by variant
            self.check_variants(checker, f"{union.kind} {union.id!r}", union.output_variants)
        outputs: list[type[BaseModel] | None] = []
        for route in self.routes:
            view = dict(scope)  # a route's outputs exist only for the records it took
            if union is not None and route.model is not None and isinstance(view.get(union.key), tuple):
                view[union.key] = route.model  # the route's records are that variant
            outputs.append(checker.walk(route.steps, view, route.model or current, prev, in_branch=True))
        if self.passes_unmatched:
            outputs.append(current)  # the unchanged record goes on too
        models = {o for o in outputs if o is not None}
        self._variants = ()
        if len(models) > 1 and self.passes_unmatched:  # each must fit what follows: checked there
            self._variants = tuple(dict.fromkeys(o for o in outputs if o is not None))
            scope[self.key] = None if None in outputs else self._variants
            checker.placement.pop(self.key, None)
            return None
        if len(models) > 1:
            names = ", ".join(sorted(m.__name__ for m in models))
            checker.add(
                "warning",
                self,
                f"Router {self.id!r}: its routes end in different models ({names}); "
                f"{{{{ {self.id}.field }}}} is checked per record at run time.",
            )
        out = models.pop() if len(models) == 1 and None not in outputs else None
        scope[self.key] = out
        checker.placement.pop(self.key, None)
        return out

    def check_variants(
        self, checker: Checker, source: str, variants: tuple[type[BaseModel], ...], *, is_input: bool = False
    ) -> None:
        """Routes keyed by model classes right after a union step (or first in a chain whose
        input is a union; ``source`` names it): every variant has a route (unless a default or
        ``on_no_match='filter'`` / ``'pass'`` takes the rest), and every route's class is one
        ``source`` can hand on."""
        union = " | ".join(v.__name__ for v in variants)
        of = source if is_input else f"{source}'s output"
        keyed = [r.model for r in self.routes if r.model is not None]
        for route in self.routes:
            model = route.model
            if model is not None and not any(issubclass(v, model) for v in variants):
                checker.add(
                    "error",
                    self,
                    f"Router {self.id!r}: route {route.name!r} is keyed by {model.__name__}, which is not a "
                    f"variant of {of} ({union}), so no record can take it. Key it by one of "
                    f"{union}, or remove it.",
                )
        if self.default is not None or self.on_no_match in ("filter", "pass"):
            return
        for variant in variants:
            if not any(issubclass(variant, m) for m in keyed):
                checker.add(
                    "error",
                    self,
                    f"Router {self.id!r}: {source} {'may be' if is_input else 'can answer'} {variant.__name__} "
                    f"({'it' if is_input else 'its output'} is {union}), "
                    f"but no route takes {variant.__name__}. Add a route keyed by {variant.__name__}, a "
                    "default= route, or on_no_match='filter' (or 'pass').",
                )

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        out["nodes"].append(self.describe())
        out["edges"].extend({"from": p, "to": self.id} for p in previous)
        ends: list[str] = [self.id] if self.passes_unmatched else []  # the unchanged record's way on
        for route in self.routes:
            start = len(out["edges"])
            ends.extend(route.layout([self.id], out))
            for edge in out["edges"][start:]:
                if edge["from"] == self.id:
                    edge["label"] = self._edge_label(route.name)
        return ends

    def _edge_label(self, name: str) -> str:
        """What takes a record down route ``name``: its name, the field's value, or default."""
        label = f"{self.by} = {name}" if isinstance(self.by, str) else name
        return f"{label} (default)" if name == self.default else label

    def describe(self) -> dict[str, Any]:
        by = (
            self.by
            if isinstance(self.by, str) or self.by is None
            else getattr(self.by, "__name__", "function")
        )
        return {
            **super().describe(),
            "routes": {r.name: [n.id for n in r.steps] for r in self.routes},
            "by": by,
            "default": self.default,
            "on_no_match": self.on_no_match,
            "passes_unmatched": self.passes_unmatched,
            "fan_out": self.fan_out,
        }
