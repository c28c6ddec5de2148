"""``Chain``: the public entry point, a :class:`~chainette.graph.chain.ChainGraph` that runs.

This module sits above every layer: it hands the graph to the runtime and, for
``progress=True``, attaches the CLI's live display. Lower layers never import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any

import anyio

from .graph.chain import ChainGraph
from .runtime.executor import run_chain
from .runtime.result import RunResult

__all__ = ["Chain"]


class Chain(ChainGraph):
    """A typed LLM pipeline: nodes in order, an inner list holding parallel branches.

    Args:
        name: Human-readable name (recorded in ``graph.json`` and ``metadata.json``).
        steps: Nodes in order. An inner list is a group of :class:`Branch` objects run in
            parallel on copies of each record.
        batch_size: Records moved between nodes together. Larger is faster for Python steps;
            LLM steps keep ``engine.max_concurrency`` requests in flight regardless.
        input_model: What each input record is validated into, when the first node does not
            say: a model, or a union of models (``A | B``, ``Union[A, B]``, or
            ``Annotated[A | B, Field(discriminator="kind")]``): a dict from any source becomes the
            variant it fits (by the discriminator when given). A chain whose first node is a
            :class:`Router` keyed by model classes takes the union of those classes by itself.

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

    def run(self, inputs: Any, output_dir: str | Path | None = None, **options: Any) -> RunResult:
        """Run the chain to completion (blocking). See :meth:`arun` for the arguments."""

        async def _main() -> RunResult:
            return await self.arun(inputs, output_dir, **options)

        try:
            return anyio.run(_main)
        except RuntimeError as exc:
            if "already running" in str(exc):
                raise RuntimeError(
                    "Chain.run() was called inside a running event loop; use `await chain.arun(...)` there."
                ) from exc
            raise

    async def arun(
        self, inputs: Any, output_dir: str | Path | None = None, *, progress: bool = False, **options: Any
    ) -> RunResult:
        """Run the chain to completion.

        Args:
            inputs: A JSONL, Parquet or CSV path, a folder of such files or a ``save_to_disk``
                folder, a Hugging Face ``Dataset`` / ``IterableDataset`` / ``DatasetDict``, or an
                (async) iterable of models or dicts.
            output_dir: The run folder (default ``runs/<chain>-<run id>``).
            progress: Show a live progress display on stderr.
            **options: See :class:`chainette.runtime.executor.RunOptions` (``overwrite``, ``resume``,
                ``ledger``, ``cache``, ``fmt``, ``strict_inputs``, ``split``, ``columns``,
                ``max_lines_per_file``, ``workers``, ``buffer``, ``on_event``, ``record_deadline_s``,
                ``record_token_budget``, ``record_trace``, ``executor``, ``ray_address``, ``replicas``,
                ``middleware``: see :mod:`chainette.runtime.events`).
        """
        if progress:
            from .cli.progress import ProgressDisplay

            # a DatasetDict is Sized too, by its splits
            sized = isinstance(inputs, Sized) and not isinstance(inputs, (str, Path, Mapping))
            total = len(inputs) if sized else None
            display = ProgressDisplay(self, total=total)
            options["middleware"] = [*options.get("middleware", ()), display]
        return await run_chain(self, inputs, output_dir, **options)
