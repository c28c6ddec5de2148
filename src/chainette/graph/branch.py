"""``Branch`` (a named sequence run on a copy of each record, optionally joined back) and
``Parallel`` (sibling branches; an inner list in a chain is one). Kinds over the node contract
(``graph.contract``); a ``Branch`` heading an inner list makes it a ``Parallel`` (:meth:`Branch.group`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from .._errors import ChainDefinitionError
from .contract import Checker, Node, Scope, as_node, spliced
from .ids import check_id

__all__ = ["Branch", "Parallel"]


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
    stands_alone = False  # alone in a chain, a branch is a parallel group of one

    def __init__(
        self, name: str, steps: Sequence[Node | list[Branch]], *, join_alias: str | None = None
    ) -> None:
        self.id = check_id(name, "Branch")
        self.name = name
        if not steps:
            raise ChainDefinitionError(f"Branch {name!r} has no steps.")
        self.steps: list[Node] = [
            as_node(node, f"Branch {name!r} steps[{i}]") for i, node in enumerate(spliced(list(steps)))
        ]
        self.join_alias = check_id(join_alias, "join alias") if join_alias is not None else None
        self.input_model = self.steps[0].input_model
        self.output_model = self.steps[-1].output_model
        self.write = False

    @classmethod
    def group(cls, items: list[Any], where: str) -> Node:
        """An inner list of branches: a :class:`Parallel` group."""
        return Parallel(items, where=where)

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
