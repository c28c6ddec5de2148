"""``ChainGraph``: what a chain is (its nodes in order; an inner list holds parallel branches).

It sits on top of ``graph/``: it imports the node kinds and the checks, and none of them
imports it (they know a chain as :class:`~chainette.graph.contract.ChainBase`). Running it is not
this layer's business: :class:`chainette.Chain` (``chainette/pipeline.py``)
is a ``ChainGraph`` that can also ``run``; the runtime and the CLI take any ``ChainGraph``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from .._errors import ChainDefinitionError
from .branch import Branch
from .checks import CheckReport, check_chain
from .contract import ChainBase, Node, as_node, spliced
from .hints import input_variants
from .subflow import Subflow

__all__ = ["ChainGraph"]


class ChainGraph(ChainBase):
    """A typed LLM pipeline, as a graph: what :class:`chainette.Chain` is, without running it
    (the arguments are documented there)."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Node | list[Branch]],
        *,
        batch_size: int = 64,
        emoji: str | None = None,
        input_model: Any = None,
    ) -> None:
        if not steps:
            raise ChainDefinitionError(f"Chain {name!r} has no steps.")
        if batch_size < 1:
            raise ChainDefinitionError(f"Chain {name!r}: batch_size must be >= 1, got {batch_size}.")
        self.name = name
        self.emoji = emoji
        self.batch_size = batch_size
        self.items: list[Node] = [
            as_node(item, f"Chain {name!r} steps[{i}]") for i, item in enumerate(spliced(list(steps)))
        ]
        if input_model is not None and input_variants(input_model) is None:
            raise ChainDefinitionError(
                f"Chain {name!r}: input_model must be a pydantic model or a union of models (A | B, "
                f"Union[A, B], Annotated[A | B, Field(discriminator='kind')]), got {input_model!r}."
            )
        self.declared_input = input_model
        self._check_unique_names()
        nested = [n for item in self.items for n in item.walk() if n.whole_stream and n is not item]
        if nested:
            raise ChainDefinitionError(
                f"Chain {self.name!r}: {nested[0].kind} {nested[0].id!r} works on the whole stream of records, "
                "so it goes at the top level of the chain, not inside a branch, route, loop, map or subflow."
            )

    def _check_unique_names(self) -> None:
        scope = [n for item in self.items for n in item.walk_scope()]  # a subflow's names are its own
        counts = Counter(name for n in scope for name in n.defines())
        dupes = sorted(k for k, v in counts.items() if v > 1)
        if dupes:
            raise ChainDefinitionError(
                f"Chain {self.name!r}: ids must be unique (they name output folders and template variables); "
                f"used more than once: {', '.join(dupes)}."
            )
        names = Counter(b.name for b in scope if isinstance(b, Branch) and b.kind == "branch")
        if any(v > 1 for v in names.values()):
            raise ChainDefinitionError(f"Chain {self.name!r}: branch names must be unique.")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        """A chain written in YAML (see :mod:`chainette.graph.yaml_chain` for the format); engines
        the file defines are registered."""
        from .yaml_chain import read_chain_yaml  # here: PyYAML is imported only for YAML chains

        name, steps, options = read_chain_yaml(path, make_chain=ChainGraph)
        return cls(name, steps, **options)

    def as_node(self, id: str | None = None, *, name: str | None = None) -> Subflow:
        """This chain as one node of another chain (a subflow), under ``id`` (default: the chain's
        name): typed by its first input and last output; the same chain may appear several times
        under different ids. See :class:`chainette.Subflow`."""
        return Subflow(id or self.name, self, name=name)

    def walk(self) -> Iterator[Node]:
        """Every node, containers included, depth first in definition order."""
        for item in self.items:
            yield from item.walk()

    def iter_nodes(self) -> Iterator[Node]:
        """Every node that does work (steps, applies, ...; not containers), branches included,
        in definition order."""
        for item in self.items:
            yield from item.leaves()

    def iter_branches(self) -> Iterator[Branch]:
        return (n for n in self.walk() if isinstance(n, Branch) and n.kind == "branch")

    def engine_names(self) -> list[str]:
        """Engines the chain's steps use, in first-use order."""
        return list(dict.fromkeys(n.engine_name for n in self.iter_nodes() if n.engine_name is not None))

    def check(
        self, *, check_engines: bool = True, engine_known: Callable[[str], bool] | None = None
    ) -> CheckReport:
        """Static checks (templates, model compatibility, engines). Sends no request, reads no file.

        Args:
            check_engines: Check that every step's engine is known.
            engine_known: Whether an engine name is known; default: registered in this process
                (``chainette.engines.registry.is_registered``). A run also accepts a name that a
                running ``chainette warmup`` server answers to.
        """
        return check_chain(self, check_engines=check_engines, engine_known=engine_known)

    def describe(self) -> dict[str, Any]:
        """The graph as data: what ``graph.json`` holds (without engine details)."""
        out: dict[str, list[dict[str, Any]]] = {"nodes": [], "edges": []}
        previous = ["input"]
        for item in self.items:
            previous = item.layout(previous, out)
        passing = {n["id"] for n in out["nodes"] if n.get("kind") == "router" and n.get("passes_unmatched")}
        for edge in out["edges"]:  # a router's edge that takes no route: the unchanged record's way on
            if edge["from"] in passing and "label" not in edge:
                edge["label"] = "no match: unchanged"
        return {"name": self.name, "batch_size": self.batch_size, **out}

    def to_mermaid(self) -> str:
        """The chain as a Mermaid flowchart (see :func:`chainette.graph.diagrams.to_mermaid`)."""
        from .diagrams import to_mermaid

        return to_mermaid(self.describe())

    def to_dot(self) -> str:
        """The chain as a Graphviz digraph (see :func:`chainette.graph.diagrams.to_dot`)."""
        from .diagrams import to_dot

        return to_dot(self.describe())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, nodes={[n.id for n in self.iter_nodes()]})"
