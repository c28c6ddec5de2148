"""``Chain``: an ordered list of nodes, where an inner list holds parallel branches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .._errors import ChainDefinitionError
from .checks import CheckReport, check_chain
from .nodes import Branch, Node, as_node

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
        self,
        name: str,
        steps: Sequence[Node | list[Branch]],
        *,
        batch_size: int = 64,
        emoji: str | None = None,
    ) -> None:
        if not steps:
            raise ChainDefinitionError(f"Chain {name!r} has no steps.")
        if batch_size < 1:
            raise ChainDefinitionError(f"Chain {name!r}: batch_size must be >= 1, got {batch_size}.")
        self.name = name
        self.emoji = emoji
        self.batch_size = batch_size
        self.items: list[Node] = [as_node(item, f"Chain {name!r} steps[{i}]") for i, item in enumerate(steps)]
        self._check_unique_names()

    def _check_unique_names(self) -> None:
        counts = Counter(n.id for n in self.iter_nodes())
        counts.update(b.join_alias for b in self.iter_branches() if b.join_alias and not b.alias_is_last_step)
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
        return self.items[0].input_model

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
        return (n for n in self.walk() if isinstance(n, Branch))

    def engine_names(self) -> list[str]:
        """Engines the chain's steps use, in first-use order."""
        return list(dict.fromkeys(n.engine_name for n in self.iter_nodes() if n.engine_name is not None))

    def check(self, *, check_engines: bool = True) -> CheckReport:
        """Static checks (templates, model compatibility, engines). Sends no request."""
        return check_chain(self, check_engines=check_engines)

    def describe(self) -> dict[str, Any]:
        """The graph as data: what ``graph.json`` holds (without engine details)."""
        out: dict[str, list[dict[str, Any]]] = {"nodes": [], "edges": []}
        previous = ["input"]
        for item in self.items:
            previous = item.layout(previous, out)
        return {"name": self.name, "batch_size": self.batch_size, **out}

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
        """The chain as a Mermaid flowchart."""
        lines = ["flowchart LR", "  input([input])"]
        graph = self.describe()
        for node in graph["nodes"]:
            shape = f'["{node["name"]}"]' if node["kind"] == "step" else f'[/"{node["name"]}"/]'
            lines.append(f"  {node['id']}{shape}")
        lines.extend(f"  {e['from']} --> {e['to']}" for e in graph["edges"])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Chain(name={self.name!r}, nodes={[n.id for n in self.iter_nodes()]})"
