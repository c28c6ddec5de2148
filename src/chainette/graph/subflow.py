"""``Subflow``: a chain used as one node of another chain (PenguiFlow's subflows and playbooks).

The subflow runs its chain's nodes on each record with a history of its own: inside,
``{{ input.field }}`` reads the value that entered the subflow and ``{{ qa.field }}`` the chain's
own steps, exactly as when the chain runs alone; outside, only the chain's final output is
visible, as ``{{ <subflow id>.field }}``. The same chain can appear several times under
different ids: each use holds copies of the chain's nodes whose ids are qualified by the
subflow's (``review.qa``), so their stats, folders (``<run>/review.qa/``), failures and
progress rows never mix, while templates keep the chain's own names (:attr:`Node.key`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from .._errors import ChainDefinitionError
from .contract import ChainBase, Checker, Node, Scope
from .ids import check_id

__all__ = ["Subflow"]


class Subflow(Node):
    """Run ``chain`` as one node: each record goes through the chain's nodes, and the chain's final
    output goes on, under ``id``.

    Args:
        id: The subflow's id: later templates read its output as ``{{ id.field }}``; its nodes'
            ids become ``<id>.<node id>`` (folders, stats, failures).
        chain: The chain to run (a :class:`chainette.Chain`; ``chain.as_node(id)`` builds this).
        name: Display name (defaults to ``id``).

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import Chain, Subflow, apply
        >>> class Text(BaseModel):
        ...     text: str
        >>> def shout(t: Text) -> Text:
        ...     return Text(text=t.text.upper())
        >>> loud = Chain("loud", [apply(shout)])
        >>> twice = Chain("twice", [Subflow("first", loud), loud.as_node("second")])
        >>> [n.id for n in twice.iter_nodes()]
        ['first.shout', 'second.shout']
    """

    kind = "subflow"
    counts_records = True
    opens_scope = True

    def __init__(self, id: str, chain: ChainBase, *, name: str | None = None) -> None:
        self.id = check_id(id, "Subflow")
        self.name = name or id
        if not hasattr(chain, "items") or not hasattr(chain, "walk"):
            raise ChainDefinitionError(f"Subflow {id!r}: expected a Chain, got {chain!r}.")
        whole = [n for item in chain.items for n in item.walk() if n.whole_stream]
        if whole:
            raise ChainDefinitionError(
                f"Subflow {id!r}: chain {chain.name!r} holds {whole[0].kind} {whole[0].id!r}, which works on the "
                "whole stream of records; a subflow runs record by record, so put it in the outer chain."
            )
        self.chain = chain
        self.items: list[Node] = [qualified(item, f"{id}.") for item in chain.items]
        self.input_model = chain.input_model
        self.output_model = _last_output(self.items)

    def children(self) -> Sequence[Node]:
        return self.items

    def placement(self) -> str | None:
        return (
            f"inside subflow {self.id!r} (its chain's own names; read its output after it as "
            f"{{{{ {self.id}.field }}}})"
        )

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        """Checks that the record fits the chain's input, then the chain's nodes in a scope of
        their own (``input`` = the value entering the subflow); after it, ``<id>`` is its output."""
        checker.check_input(self, self.input_model, current, prev)
        start = self.input_model or current
        outer = checker.placement
        checker.placement = checker.places(self.items)
        try:
            out = checker.walk(self.items, {"input": start}, start, None)
        finally:
            checker.placement = outer
        scope[self.key] = out
        return out

    def layout(self, previous: list[str], out: dict[str, list[dict[str, Any]]]) -> list[str]:
        """The subflow node, its chain drawn inside it (edge ``in`` into it, ``out`` from its end
        back to the subflow); the next node hangs from the subflow."""
        out["nodes"].append(self.describe())
        out["edges"].extend({"from": p, "to": self.id} for p in previous)
        first_node, first_edge = len(out["nodes"]), len(out["edges"])
        last = [self.id]
        for node in self.items:
            last = node.layout(last, out)
        for edge in out["edges"][first_edge:]:
            if edge["from"] == self.id:
                edge["label"] = "in"
        out["edges"].extend({"from": end, "to": self.id, "label": "out"} for end in last)
        for entry in out["nodes"][first_node:]:
            entry.setdefault("parent", self.id)  # an inner container already named its own
        return [self.id]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "chain": self.chain.name, "nodes": [n.id for n in self.items]}


def qualified(node: Node, prefix: str) -> Node:
    """A copy of ``node`` (and of every node it holds) with ids prefixed by ``prefix``; each copy
    keeps the name templates read it as (:attr:`Node.key`). The original is left as it is."""
    twin = copy.copy(node)
    twin._key = node.key
    twin.id = prefix + node.id
    for attr, value in vars(node).items():
        if isinstance(value, Node):
            setattr(twin, attr, qualified(value, prefix))
        elif isinstance(value, list) and value and all(isinstance(v, Node) for v in value):
            setattr(twin, attr, [qualified(v, prefix) for v in value])
    return twin


def _last_output(items: Sequence[Node]) -> type[BaseModel] | None:
    """The model of the value that leaves the chain (the last node that changes the value)."""
    for node in reversed(items):
        if not node.passes_through:
            return node.output_model
    return items[0].input_model
