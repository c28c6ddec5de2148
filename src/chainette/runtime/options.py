"""The options of a run (:class:`RunOptions`) and their checks: below both executors, the local
one (``executor.py``) and the Ray one (``ray_executor.py``), which share them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from .context import EventHandler
from .events import Middleware
from .requests import CacheMode

__all__ = ["Executor", "RunOptions"]


Executor = Literal["local", "ray"]
"""Where a run's records go through the chain: this process, or a pool of Ray actors."""

_LISTENERS = frozenset({"on_event", "middleware"})
"""Options that are listeners, not configuration: kept out of ``metadata.json``."""


@dataclass
class RunOptions:
    """Options of ``Chain.run`` / ``Chain.arun``."""

    overwrite: bool = False
    """Replace an existing, non-empty output folder."""
    resume: bool = False
    """Continue a run folder of this chain (interrupted, crashed or finished): the run is replayed,
    every request the ledger holds is answered from it, only what is missing is sent, and the
    folder is rewritten to what an uninterrupted run gives."""
    ledger: str | Path | None = None
    """The request ledger (SQLite). Default ``$CHAINETTE_LEDGER`` or ``.chainette/ledger.sqlite``."""
    cache: CacheMode = "use"
    """``use`` the ledger, ``refresh`` it (send again, overwrite), or ``off``."""
    fmt: str = "jsonl"
    """Output format of step folders and ``flattened/``: jsonl, csv or parquet."""
    max_lines_per_file: int = 100_000
    """Rows per file part before rolling to the next (``000.jsonl``, ``001.jsonl``, ...)."""
    strict_inputs: bool = False
    """Raise on the first unreadable input record instead of writing it to failures."""
    split: str | None = None
    """The split to read from an input dataset with several (a ``DatasetDict``, a ``save_to_disk``
    folder, a folder of ``train-*.parquet`` / ``test-*.parquet`` files)."""
    columns: Mapping[str, str] | None = None
    """``{field: column}``: the input column each field of the chain's input model reads, when it
    is not the field's own name (``{"text": "content"}``)."""
    workers: int = 4
    """Kept for compatibility: no longer the unit of waiting (records move on one by one, see
    ``runtime/stages.py``). Locally it only sizes the default ``max_in_flight`` (at least
    ``batch_size × workers``); with ``executor="ray"``, ``batch_size × workers`` records in
    flight per actor."""
    buffer: int = 4
    """Chunks buffered between two stages (backpressure bound)."""
    max_in_flight: int | None = None
    """Records in flight at once in a stage (each goes through the nodes on its own and is handed
    on when done). None: ``max(256, batch_size × workers, 2 × the largest max_concurrency among
    the chain's engines × the chain's engine steps (at most 4))``: a record holds its slot through
    each of its requests in turn. The engines' ``max_concurrency`` and rate limits still bound
    requests."""
    ordered: bool = True
    """Write ``flattened/`` in input order: a finished record waits for those before it, in a
    window of ``16 × max_in_flight`` finished records (its work never waits, only its row; a full
    window pauses the reading). False: rows land as records finish (each has ``_index``), so a
    slow record never holds a row back. A stage holding a streaming step (``samples > 1``) hands
    its samples on as they are made, in completion order either way (memory flat in samples)."""
    on_event: EventHandler | None = field(default=None, repr=False)
    """``handler(kind, data)`` for every run event (see ``runtime/events.py``); its errors stop the run."""
    record_deadline_s: float | None = None
    """Seconds each record may take through the whole chain, from when it is read (None: no
    limit). A record past it fails with ``BudgetExceededError`` at the next node that would work
    on it, an engine call in flight is cut at it, and a loop ends there (``Loop.on_budget``)."""
    record_token_budget: int | None = None
    """Prompt + completion tokens each record may spend through the whole chain (None: no
    limit), answers from the ledger included so a rerun decides the same way. Checked before
    each request and function call: a record that has spent that many fails with
    ``BudgetExceededError`` (a request in flight finishes; the last one may go over)."""
    record_trace: bool = False
    """Note, per input record, when each node worked on it and its requests' tokens (an
    experiment's per-case timeline and cost): ``RunResult.trace``. Off: nothing is noted, at no
    cost. On, a streaming step (``samples > 1``) hands its samples on once all are done."""
    middleware: Sequence[Middleware] = field(default=(), repr=False)
    """Receive every run event as an :class:`~chainette.runtime.events.Event`, after ``on_event``,
    in this order; quick, on the event loop, and never fatal (errors are logged once each)."""
    executor: Executor = "local"
    """``local``: the stages above, in this process. ``ray``: chunks of records go to ``replicas``
    Ray actors that hold the engines and run the whole chain over each chunk; this process still
    reads the inputs and is the only writer of the run folder (see ``runtime/ray_executor.py``)."""
    ray_address: str | None = None
    """With ``executor="ray"``: the cluster to join (``auto``, ``host:6379``, ``ray://host:10001``).
    None starts a local Ray instance for the run (this machine's CPUs, a small object store, no
    dashboard), unless this process is already connected to one."""
    replicas: int = 2
    """With ``executor="ray"``: how many actors run chunks, each with its own engines; at most
    ``replicas × workers`` chunks are out at once (backpressure)."""


def _check_executor(opts: RunOptions) -> None:
    if opts.executor not in get_args(Executor):
        raise ValueError(
            f"executor must be one of {', '.join(map(repr, get_args(Executor)))}, got {opts.executor!r}."
        )
    replicas = opts.replicas
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}.")
    if opts.executor != "ray" and opts.ray_address is not None:
        raise ValueError("ray_address is for executor='ray' (CLI: --executor ray --address ADDR).")


def _check_record_limits(opts: RunOptions) -> None:
    deadline, budget = opts.record_deadline_s, opts.record_token_budget
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0
    ):
        raise ValueError(f"record_deadline_s must be a number of seconds > 0 (or None), got {deadline!r}.")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"record_token_budget must be an integer >= 1 (or None), got {budget!r}.")
    bound = opts.max_in_flight
    if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 1):
        raise ValueError(f"max_in_flight must be an integer >= 1 (or None), got {bound!r}.")
