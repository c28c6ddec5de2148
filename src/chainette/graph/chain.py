"""``Chain``: an ordered list of nodes, where an inner list holds parallel branches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .._errors import ChainDefinitionError
from .checks import CheckReport, check_chain
from .nodes import Apply, Branch, Node, Step

if TYPE_CHECKING:
    from ..runtime.result import RunResult

__all__ = ["Chain"]


class Chain:
    """A typed LLM pipeline.

    Args:
        name: Human-readable name (recorded in ``graph.json`` and ``metadata.json``).
        steps: Nodes in order. An inner list is a group of :class:`Branch` objects run in
            parallel on copies of each record.
        batch_size: Records moved between nodes together. Larger is faster for Python steps;
            LLM steps keep ``engine.max_concurrency`` requests in flight regardless.

    Example:
        >>> from pydantic import BaseModel
        >>> from chainette import Chain, apply
        >>> class N(BaseModel):
        ...     x: int
        >>> def inc(n: N) -> N:
        ...     return N(x=n.x + 1)
        >>> chain = Chain(name="demo", steps=[apply(inc)])
        >>> result = chain.run([N(x=1)], output_dir="runs/demo")  # doctest: +SKIP
    """

    def __init__(
        self, name: str, steps: list[Node | list[Branch]], *, batch_size: int = 64, emoji: str | None = None
    ) -> None:
        if not steps:
            raise ChainDefinitionError(f"Chain {name!r} has no steps.")
        if batch_size < 1:
            raise ChainDefinitionError(f"Chain {name!r}: batch_size must be >= 1, got {batch_size}.")
        self.name = name
        self.emoji = emoji
        self.batch_size = batch_size
        self.items: list[Node | list[Branch]] = []
        for i, item in enumerate(steps):
            if isinstance(item, list):
                if not item or not all(isinstance(b, Branch) for b in item):
                    raise ChainDefinitionError(
                        f"Chain {name!r} steps[{i}]: an inner list must hold Branch objects, got {item!r}."
                    )
                self.items.append(list(item))
            elif isinstance(item, (Step, Apply)):
                self.items.append(item)
            elif isinstance(item, Branch):
                self.items.append([item])
            else:
                raise ChainDefinitionError(
                    f"Chain {name!r} steps[{i}]: expected a Step, apply(...), or a list of Branch, got {item!r}."
                )
        self._check_unique_names()

    def _check_unique_names(self) -> None:
        counts = Counter(n.id for n in self.iter_nodes())
        counts.update(b.join_alias for b in self.iter_branches() if b.join_alias)
        dupes = sorted(k for k, v in counts.items() if v > 1)
        if dupes:
            raise ChainDefinitionError(
                f"Chain {self.name!r}: ids must be unique (they name output folders and template variables); "
                f"used more than once: {', '.join(dupes)}."
            )
        names = Counter(b.name for b in self.iter_branches())
        if any(v > 1 for v in names.values()):
            raise ChainDefinitionError(f"Chain {self.name!r}: branch names must be unique.")

    @property
    def input_model(self) -> type[BaseModel] | None:
        """The model each input record is validated into (the first node's input model)."""
        first = self.items[0]
        node = first[0] if isinstance(first, list) else first
        return node.input_model

    def iter_nodes(self) -> Iterator[Step | Apply]:
        """Every Step and Apply, branches included, in definition order."""
        for item in self.items:
            for node in (n for b in item for n in b.steps) if isinstance(item, list) else (item,):
                assert isinstance(node, (Step, Apply))
                yield node

    def iter_branches(self) -> Iterator[Branch]:
        for item in self.items:
            if isinstance(item, list):
                yield from item

    def engine_names(self) -> list[str]:
        """Engines the chain's steps use, in first-use order."""
        return list(dict.fromkeys(n.engine_name for n in self.iter_nodes() if isinstance(n, Step)))

    def check(self, *, check_engines: bool = True) -> CheckReport:
        """Static checks (templates, model compatibility, engines). Sends no request."""
        return check_chain(self, check_engines=check_engines)

    def describe(self) -> dict[str, Any]:
        """The graph as data: what ``graph.json`` holds (without engine details)."""
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, str]] = []
        previous = ["input"]
        for item in self.items:
            if isinstance(item, list):
                ends = []
                for branch in item:
                    last = previous
                    for node in branch.steps:
                        nodes.append(
                            {**node.describe(), "branch": branch.name, "join_alias": branch.join_alias}
                        )
                        edges.extend({"from": p, "to": node.id} for p in last)
                        last = [node.id]
                    if branch.join_alias:
                        ends.extend(last)
                previous = previous + ends if ends else previous
                continue
            nodes.append(item.describe())
            edges.extend({"from": p, "to": item.id} for p in previous)
            previous = [item.id]
        return {"name": self.name, "batch_size": self.batch_size, "nodes": nodes, "edges": edges}

    def run(self, inputs: Any, output_dir: str | Path | None = None, **options: Any) -> RunResult:
        """Run the chain to completion (blocking). See :meth:`arun` for the arguments."""
        import anyio

        from ..runtime.executor import run_chain

        async def _main() -> RunResult:
            return await run_chain(self, inputs, output_dir, **options)

        try:
            return anyio.run(_main)
        except RuntimeError as exc:
            if "already running" in str(exc):
                raise RuntimeError(
                    "Chain.run() was called inside a running event loop; use `await chain.arun(...)` there."
                ) from exc
            raise

    async def arun(self, inputs: Any, output_dir: str | Path | None = None, **options: Any) -> RunResult:
        """Run the chain to completion.

        Args:
            inputs: A JSONL path, or an (async) iterable of models or dicts.
            output_dir: The run folder (default ``runs/<chain>-<run id>``).
            **options: See :class:`chainette.runtime.executor.RunOptions` (``overwrite``,
                ``fmt``, ``strict_inputs``, ``max_lines_per_file``, ``workers``, ``progress``, ``on_event``).
        """
        from ..runtime.executor import run_chain

        return await run_chain(self, inputs, output_dir, **options)

    def to_mermaid(self) -> str:
        """The chain as a Mermaid flowchart (see :func:`chainette.graph.diagrams.to_mermaid`)."""
        from .diagrams import to_mermaid

        return to_mermaid(self.describe())

    def to_dot(self) -> str:
        """The chain as a Graphviz digraph (see :func:`chainette.graph.diagrams.to_dot`)."""
        from .diagrams import to_dot

        return to_dot(self.describe())

    def __repr__(self) -> str:
        return f"Chain(name={self.name!r}, nodes={[n.id for n in self.iter_nodes()]})"
