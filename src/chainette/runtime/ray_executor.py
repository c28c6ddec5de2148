"""The Ray executor: the same run, its chunks run by a pool of Ray actors.

``run_chain(..., executor="ray")`` lays out and locks the run folder as a local run does; only
the middle differs (:func:`run_on_ray` instead of the local stages). The driver (this process)

1. reads the inputs with :func:`~chainette.runtime.run_shared.read_records` (the same ids, the same
   failures for unreadable or unfitting inputs, written here);
2. starts ``replicas`` actors (:class:`~chainette.runtime.ray_worker.ChainWorker`): each gets the
   chain (pickled once, ``ray.put``), the engine definitions registered here and the ledger's
   path, and holds its own engines for the length of the run;
3. hands each chunk to the actor with the most room (at most ``workers × batch_size`` records in
   flight per actor, so ``replicas × workers × batch_size`` in all: a slow cluster makes the
   reading wait); the actor hands back each record as soon as it is done (a Ray streaming
   generator, :meth:`~chainette.runtime.ray_worker.ChainWorker.run_chunk`), and the driver writes
   its rows through the run's one ``RunWriter``, adds its node counters to the run's (which
   ``metadata.json`` reports as for a local run) and gives its room back: a record never waits
   for its siblings, neither to be written nor to let the next chunk in.

The actors are spread over the cluster's nodes. A killed worker (its process, or its whole node)
loses nothing and duplicates nothing: the driver sends the records of its chunks that it had not
handed back to actors that answer, while Ray restarts it where there is room (``max_restarts``;
its room comes back once it answers); rows are written only from a record's result that arrived
whole, and the answers the dead worker had already received are in the ledger, so the second try
gets them from it. A chunk lost more than ``MAX_RESTARTS`` times, or every actor lost for
``REVIVE_TIMEOUT_S``, stops the run with :class:`ExecutorError`, and ``--resume`` continues it.

Ray is imported here only, and this module only when a run asks for ``executor="ray"``.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import logging
import os
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

from .._errors import ChainDefinitionError, ExecutorError, MissingDependencyError
from ..engines.registry import get_engine_config
from ..graph.chain import ChainGraph
from .context import RunContext
from .options import RunOptions
from .ray_worker import ChainWorker, ChunkResult, RecordIn, add_stats
from .records import Record, dump
from .run_shared import first_error as _first_error
from .run_shared import read_records

__all__ = [
    "MAX_RESTARTS",
    "OBJECT_STORE_BYTES",
    "check_ray_run",
    "import_ray",
    "local_ray_options",
    "run_on_ray",
]

MAX_RESTARTS = 3
"""Times an actor is restarted after its process (or its node) died, and times a chunk's records
not handed back yet are sent again after its actor was lost (a record is only ever written once:
from the try that handed it back)."""
OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""The object store of a local Ray instance: chunks and their results are small."""
REVIVE_TIMEOUT_S = 120.0
"""Seconds the run waits, once every actor is lost, for one of them to answer again."""
CLOSE_TIMEOUT_S = 30.0
"""Seconds the workers get to release their engines at the end before they are killed."""


def import_ray() -> ModuleType:
    """``ray``, or :class:`MissingDependencyError` naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            f"executor='ray' needs Ray, which is not installed ({exc}). Install it with: "
            "pip install 'chainette[ray]' (or run with executor='local', the default)."
        ) from exc
    return ray


async def run_on_ray(
    chain: ChainGraph,
    inputs: Any,
    opts: RunOptions,
    ctx: RunContext,
    counts: dict[str, int],
    meta: dict[str, Any],
) -> None:
    """Run ``chain`` over ``inputs`` on Ray actors, writing through ``ctx.writer`` (see the module)."""
    ray = import_ray()
    started_here = _connect(ray, opts)
    seen: dict[str, Any] = {"pids": set(), "down": set(), "retried": 0}
    meta["ray"] = {"address": opts.ray_address, "replicas": opts.replicas, "version": ray.__version__}
    actors: list[Any] = []
    try:
        actors = _start_workers(ray, chain, opts, ctx)
        await _stream(ray, chain, inputs, opts, ctx, counts, actors, seen)
    except BaseExceptionGroup as group:  # the error that stopped the run, as a local run raises it
        raise _first_error(group) from None
    finally:
        meta["ray"]["worker_processes"] = len(seen["pids"])
        meta["ray"]["chunks_retried"] = seen["retried"]
        with anyio.CancelScope(shield=True):
            await _close_workers(ray, actors, seen["down"])
        if started_here:
            ray.shutdown()


def check_ray_run(chain: ChainGraph) -> None:
    """Refuse, before the run folder is made, a Ray run that cannot work: Ray not installed, a node
    that needs the whole input stream, a chain that cannot be pickled (naming the node)."""
    whole = [f"{n.kind} {n.id!r}" for n in chain.items if n.whole_stream]
    if whole:
        raise ChainDefinitionError(
            f"{', '.join(whole)} needs the whole input stream, and the Ray executor runs chunks "
            "independently on several workers. Run this chain with executor='local'."
        )
    ray = import_ray()
    _pickle_user_modules_by_value(ray)
    _check_picklable(ray, chain)


def local_ray_options(num_cpus: int | None = None) -> dict[str, Any]:
    """``ray.init`` arguments of the local instance a Ray run starts: ``num_cpus`` (default: this
    machine's), a small object store, no dashboard, and this process's ``sys.path`` as the
    workers' ``PYTHONPATH`` so they import what it imports, by the same names."""
    return {
        "address": "local",
        "num_cpus": num_cpus or os.cpu_count() or 1,
        "object_store_memory": OBJECT_STORE_BYTES,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}},
    }


def _connect(ray: Any, opts: RunOptions) -> bool:
    """Join the cluster at ``ray_address``, or start a local instance; True if this run started it."""
    if ray.is_initialized():
        return False
    where = f"the Ray cluster at {opts.ray_address!r}" if opts.ray_address else "a local Ray instance"
    try:
        if opts.ray_address is not None:
            ray.init(address=opts.ray_address, logging_level=logging.WARNING)
        else:
            ray.init(**local_ray_options())
    except Exception as exc:
        raise ExecutorError(
            f"Cannot start {where}: {type(exc).__name__}: {exc}. Check the address (ray_address= / "
            "--address: 'auto', 'host:6379' or 'ray://host:10001'), or run with executor='local'."
        ) from exc
    return True


def _start_workers(ray: Any, chain: ChainGraph, opts: RunOptions, ctx: RunContext) -> list[Any]:
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    per_actor = round(min(1.0, cpus / opts.replicas), 4)  # never more than the cluster has: no hang
    # spread over the nodes (a node lost takes as few actors as can be); a lost actor's chunks
    # are sent again by the driver (to any actor), not held by Ray until it is back
    worker = ray.remote(ChainWorker).options(
        num_cpus=per_actor, max_restarts=MAX_RESTARTS, max_task_retries=0, scheduling_strategy="SPREAD"
    )
    engines = [get_engine_config(name) for name in chain.engine_names()]
    ledger = str(ctx.cache.path.resolve()) if ctx.cache.path is not None else None
    # the chain itself, not a ray.put reference: a restarted actor needs its arguments again
    return [
        worker.remote(chain, engines, ledger, ctx.cache.mode, opts.record_deadline_s)
        for _ in range(opts.replicas)
    ]


async def _stream(
    ray: Any,
    chain: ChainGraph,
    inputs: Any,
    opts: RunOptions,
    ctx: RunContext,
    counts: dict[str, int],
    actors: list[Any],
    seen: dict[str, Any],
) -> None:
    """Read, send each chunk to the actor with room for it, write each record's result as it
    comes back; the records a lost actor had not handed back go to another (see :class:`_Pool`)."""

    async def one(pool: _Pool, slot: int, records: list[Record]) -> None:
        left = {record.id: record for record in records}
        for attempt in range(MAX_RESTARTS + 1):
            try:
                parts = (
                    actors[slot]
                    .run_chunk.options(num_returns="streaming")
                    .remote(_records_in(list(left.values())))
                )
                async for ref in parts:
                    part = await _call(ray, ref)
                    for rid in part.done:
                        del left[rid]
                    pool.give_back(slot, len(part.done))
                    seen["pids"].add(part.worker)
                    _write(part, ctx)
                    await ctx.writer.maybe_flush()
            except ray.exceptions.RayActorError as exc:
                pool.lost(slot, len(left))
                if attempt == MAX_RESTARTS:
                    raise _lost(list(left.values()), exc) from exc
                pool.retried += 1
                slot = await pool.take(len(left))
            else:
                return

    async with anyio.create_task_group() as keeper:  # the watchers of lost actors
        pool = _Pool(ray, actors, max(1, opts.workers) * chain.batch_size, keeper)
        try:
            async with anyio.create_task_group() as tg:
                async for records in read_records(chain, inputs, opts, ctx, counts):
                    slot = await pool.take(len(records))  # backpressure: wait for records to come back
                    tg.start_soon(one, pool, slot, records)
        finally:
            seen["down"], seen["retried"] = pool.down(), pool.retried
            keeper.cancel_scope.cancel()  # every chunk is back: stop waiting for lost actors
            await pool.aclose()


async def _call(ray: Any, ref: Any) -> ChunkResult:
    """A part of the chunk's result; a worker's error raised as itself (a lost worker: ``RayActorError``)."""
    try:
        result: ChunkResult = await ref
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None  # the error a local run would have raised
        raise
    return result


def _lost(records: list[Record], exc: BaseException) -> ExecutorError:
    return ExecutorError(
        f"The Ray workers running records {records[0].id}..{records[-1].id} (inputs "
        f"{records[0].index}..{records[-1].index}) were lost {MAX_RESTARTS + 1} times (a process or "
        f"a node died): {exc}. "
        "The run folder holds every record that finished; rerun with resume=True (--resume): "
        "answers already in the ledger are not sent again."
    )


class _Pool:
    """The actors' room: ``per_actor`` records in flight on each. A chunk goes to the actor with
    the most room once it has room for the whole chunk; each record handed back gives its room
    back. The records of a chunk whose actor is lost (its process or its node died:
    ``RayActorError``) park their room on that actor and go to another; the lost actor's room
    comes back once it answers again (Ray restarts it where there is room, ``max_restarts``). If no
    actor answers for ``REVIVE_TIMEOUT_S`` while all are lost, the run stops with
    :class:`ExecutorError`."""

    def __init__(self, ray: Any, actors: list[Any], per_actor: int, tg: Any) -> None:
        self.ray = ray
        self.actors = actors
        self.tg = tg
        self.room = [per_actor] * len(actors)
        """Actor index → records it may still take."""
        self.parked: dict[int, int] = {}
        """Actor index → room of the records it lost, given back once it answers again."""
        self.gone: set[int] = set()
        """Actors that will not come back (their restarts spent)."""
        self.retried = 0
        """Chunks sent again (their records not handed back) because their actor was lost."""
        self._all_lost_since: float | None = None
        self._changed = anyio.Event()

    async def take(self, n: int) -> int:
        """An actor with room for ``n`` records (the one with the most), its room taken."""
        while True:
            up = [i for i in range(len(self.actors)) if i not in self.parked and i not in self.gone]
            best = max(up, key=self.room.__getitem__, default=None)
            if best is not None and self.room[best] >= n:
                self.room[best] -= n
                return best
            if self._changed.is_set():
                self._changed = anyio.Event()
            await self._changed.wait()

    def give_back(self, slot: int, n: int) -> None:
        self.room[slot] += n
        self._changed.set()

    def lost(self, slot: int, n: int) -> None:
        """``slot``'s actor did not answer: park the room of its ``n`` records until it does (one
        watcher per actor)."""
        first = slot not in self.parked
        self.parked[slot] = self.parked.get(slot, 0) + n
        if first:
            self.tg.start_soon(self._revive, slot)

    def down(self) -> set[int]:
        """Actors not answering now: parked or gone."""
        return set(self.parked) | self.gone

    async def _revive(self, i: int) -> None:
        exceptions = self.ray.exceptions
        while True:
            with anyio.move_on_after(1.0):  # a restart may wait for room on a node: check often
                try:
                    await self.actors[i].pid.remote()
                except exceptions.ActorUnavailableError:  # not known dead yet: ask again
                    await anyio.sleep(0.2)
                except exceptions.RayActorError:  # dead for good
                    self.gone.add(i)
                    del self.parked[i]
                    self._changed.set()
                    self._check_any_left()
                    return
                else:
                    self.give_back(i, self.parked.pop(i))
                    self._all_lost_since = None
                    return
            self._check_any_left()

    def _check_any_left(self) -> None:
        if len(self.down()) < len(self.actors):
            self._all_lost_since = None
            return
        now = time.monotonic()
        if self._all_lost_since is None:
            self._all_lost_since = now
        if len(self.gone) == len(self.actors) or now - self._all_lost_since > REVIVE_TIMEOUT_S:
            raise ExecutorError(
                f"Every Ray worker of the run was lost ({len(self.actors)} actors) and none came back "
                f"within {REVIVE_TIMEOUT_S:.0f} s (restarted {MAX_RESTARTS} times at most, where the "
                "cluster has room for them). The run folder holds every record that finished; rerun "
                "with resume=True (--resume) once the cluster has room: answers already in the "
                "ledger are not sent again."
            )

    async def aclose(self) -> None:
        self._changed.set()


def _records_in(records: list[Record]) -> list[RecordIn]:
    now = time.monotonic()
    return [
        (r.id, r.index, dump(r.value), None if r.deadline is None else r.deadline - now, r.budget)
        for r in records
    ]


def _write(result: ChunkResult, ctx: RunContext) -> None:
    """Some records' rows into the run folder, its counters into the run's (then progress events)."""
    writer = ctx.writer
    for key in result.folders:
        writer.open_folder(key)
    for key, row in result.rows:
        writer.add(key, row)
    for row in result.failures:
        writer.add_failure(row)
        ctx.on_event("record_failed", {"node": row["node"], "record": row["_id"], "message": row["message"]})
    for row in result.flattened:
        writer.add_flattened(row)
    for node_id, theirs in result.stats.items():
        add_stats(ctx.stats, node_id, theirs)
        ctx.progress(node_id)
    for name, described in result.engines.items():
        ctx.broker.described.setdefault(name, described)


async def _close_workers(ray: Any, actors: list[Any], down: set[int]) -> None:
    """Let each worker still answering release its engines (for a while), then end every one
    (a lost one's restart too, if it is still waiting for room)."""

    async def close(actor: Any) -> None:
        with contextlib.suppress(Exception):  # a dead worker has nothing left to release
            await actor.close.remote()

    with anyio.move_on_after(CLOSE_TIMEOUT_S):
        async with anyio.create_task_group() as tg:
            for i, actor in enumerate(actors):
                if i not in down:
                    tg.start_soon(close, actor)
    for actor in actors:
        ray.kill(actor, no_restart=True)


def _check_picklable(ray: Any, chain: ChainGraph) -> None:
    """Refuse, before any worker starts, a chain that cannot be sent to one, naming the node."""
    try:
        ray.cloudpickle.dumps(chain)
        return
    except Exception as exc:
        error = exc
    culprit = None
    for node in chain.walk():  # depth first: the last node that fails holds the culprit itself
        try:
            ray.cloudpickle.dumps(node)
        except Exception as exc:
            culprit, error = node, exc
    where = f"{culprit.kind} {culprit.id!r}" if culprit is not None else f"chain {chain.name!r}"
    raise ChainDefinitionError(
        f"{where} cannot be sent to the Ray workers: pickling it failed ({type(error).__name__}: {error}). "
        "On Ray the chain's functions and models are pickled (cloudpickle): a function must not hold "
        "a lock, an open file, a connection or a client; create those inside the function (once per "
        "worker, e.g. in a module-level cache), or run with executor='local'."
    ) from error


def _pickle_user_modules_by_value(ray: Any) -> None:
    """Modules this process loaded that a worker could not import by name (a chain file given by
    path, a module loaded with ``spec_from_file_location``) go to the workers with the chain:
    their functions and classes are pickled by value."""
    installed = {
        str(Path(p).resolve())
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
    own = str(Path(__file__).resolve().parents[1])
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if module is None or not file or name == "__main__":
            continue
        resolved = str(Path(file).resolve())
        if resolved.startswith(own) or any(resolved.startswith(p) for p in installed):
            continue
        if not _importable(name, resolved):
            ray.cloudpickle.register_pickle_by_value(module)


def _importable(name: str, file: str) -> bool:
    """Would ``import name`` (searching ``sys.path``) load ``file``?"""
    search: Any = None
    spec = None
    parts = name.split(".")
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), search)
        if spec is None:
            return False
        search = spec.submodule_search_locations
    return spec is not None and spec.origin is not None and str(Path(spec.origin).resolve()) == file
