"""Driving records through a chain: source → stages (the last one writes the rows), on anyio.

A stage is one chain item, or several consecutive sync ``apply`` nodes. Every stage is a task
(or a few) joined to the next by a bounded memory stream of chunks, so
memory does not grow with the number of rows and a slow stage slows its producers
(backpressure). Engines start lazily and are released as soon as the last stage that needs
them has finished. The run folder is written as records complete.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._errors import ChainDefinitionError, RunFolderError
from ..engines.broker import EngineBroker
from ..engines.registry import get_engine_config, is_available
from ..engines.secrets import scrub_exception, scrub_strings, scrub_text
from ..graph.chain import ChainGraph
from ..graph.stream_ops import Take
from ..io.inputs import describe_inputs, open_inputs
from ..io.writer import RunWriter, fs_error
from . import kinds  # noqa: F401  (importing it registers the built-in kinds' runners)
from .accounting import cache_summary, cost_summary
from .collector import run_collector
from .context import EventHandler, RunContext
from .dispatch import missing_runners
from .events import EventStream
from .node_events import node_events
from .options import _LISTENERS, Executor, RunOptions, _check_executor, _check_record_limits
from .record_trace import RecordTrace
from .records import Record
from .requests import CacheMode, RequestCache
from .result import RunResult
from .run_meta import _graph, _iso, _keep_start_warnings, _start_warnings, _summary, _versions
from .run_shared import first_error as _first_error
from .run_shared import read_records
from .stages import Flow, flatten, per_record, run_stage, stages
from .stream_runner import STOPS_INPUT

__all__ = ["Executor", "RunOptions", "flatten", "run_chain"]

_log = logging.getLogger("chainette")

Chunk = list[Record]


async def run_chain(
    chain: ChainGraph, inputs: Any, output_dir: str | Path | None = None, **options: Any
) -> RunResult:
    """Run ``chain`` over ``inputs`` and write the run folder. See :meth:`Chain.arun`."""
    try:
        opts = RunOptions(**options)
    except TypeError as exc:
        known = ", ".join(RunOptions.__dataclass_fields__)
        raise TypeError(f"{exc}. Known run options: {known}.") from None
    report = chain.check(engine_known=is_available)
    report.raise_for_errors()
    unrunnable = missing_runners(chain.walk())
    if unrunnable:
        raise ChainDefinitionError("\n".join(unrunnable))
    if opts.cache not in get_args(CacheMode):
        raise ValueError(
            f"cache must be one of {', '.join(map(repr, get_args(CacheMode)))}, got {opts.cache!r}."
        )
    _check_record_limits(opts)
    _check_executor(opts)
    if opts.executor == "ray":  # before the run folder exists: Ray installed, the chain sendable
        from .ray_executor import check_ray_run

        check_ray_run(chain)
    model = chain.input_model
    # the file's kind, its split and columns are checked here, before the folder or any request
    source = await anyio.to_thread.run_sync(
        functools.partial(open_inputs, inputs, split=opts.split, columns=opts.columns, model=model)
    )

    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    path = Path(output_dir) if output_dir is not None else Path("runs") / f"{_slug(chain.name)}-{run_id}"
    users = Counter(n.engine_name for n in chain.iter_nodes() if n.engine_name is not None)
    cache = RequestCache.open(opts.ledger, opts.cache if users else "off")  # no LLM step: no ledger
    try:
        writer = RunWriter(
            path,
            fmt=opts.fmt,
            max_lines_per_file=opts.max_lines_per_file,
            overwrite=opts.overwrite,
            resume=opts.resume,
            chain_name=chain.name,
            run_id=run_id,
        )
    except BaseException:
        cache.close()
        raise
    try:
        with run_collector():
            notes = _start_warnings(chain, report)
            return await _run_in_folder(chain, source, opts, writer, cache, users, run_id, notes)
    finally:
        cache.close()
        writer.release()


async def _run_in_folder(
    chain: ChainGraph,
    inputs: Any,
    opts: RunOptions,
    writer: RunWriter,
    cache: RequestCache,
    users: Counter[str],
    run_id: str,
    notes: tuple[list[str], dict[str, dict[str, Any]]] = ([], {}),
) -> RunResult:
    """The run proper, in the locked ``writer.path``: lay out the folder, stream the records
    through the stages, then record how it ended in ``metadata.json``."""
    stream = EventStream(opts.on_event, opts.middleware)
    emit: EventHandler = stream if stream.listened else _ignore_event
    broker = EngineBroker(users, on_event=emit)
    ctx = RunContext(writer, broker, emit, cache)
    ctx.record_deadline_s = opts.record_deadline_s
    trace = RecordTrace() if opts.record_trace else None
    if trace is not None:
        ctx.observe_nodes, ctx.usage = trace.observe, trace
    if stream.wanted & {"node_started", "node_finished"}:  # per record and node: only when asked for
        ctx.observe_nodes = node_events(ctx.observe_nodes)
    ctx.state[STOPS_INPUT] = _input_stoppers(chain)
    started = time.time()
    meta = _initial_metadata(chain, opts, writer, run_id, started)
    warnings = notes[0]
    for warning in warnings:  # said before the run starts (so before a progress display), and kept
        _log.warning(warning)
    _keep_start_warnings(meta, notes)
    _lay_out(chain, writer, meta)
    counts = {"records_in": 0}
    emit(
        "run_started",
        {
            "chain": chain.name,
            "run_id": run_id,
            "output_dir": str(writer.path),
            "nodes": [n.id for n in chain.iter_nodes()],
            "warnings": list(warnings),
        },
    )
    try:
        if opts.executor == "ray":
            from .ray_executor import run_on_ray  # Ray is imported only for a Ray run

            await run_on_ray(chain, inputs, opts, ctx, counts, meta)
        else:
            await _pipeline(chain, inputs, opts, ctx, counts, meta)
        meta["status"] = "completed"
        if counts["records_in"] == 0:
            warning = f"No input records: {describe_inputs(inputs)} held none (empty, or blank lines only), so nothing ran."
            meta.setdefault("warnings", []).append(warning)
            _log.warning(warning)
    except BaseException as exc:
        meta["status"] = (
            "interrupted"
            if isinstance(exc, (KeyboardInterrupt, anyio.get_cancelled_exc_class()))
            else "failed"
        )
        scrub_exception(exc)  # what propagates (and is printed) names no credential either
        meta["error"] = scrub_text(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        meta = await _finish(chain, ctx, writer, counts, meta, started)
    return RunResult(path=writer.path, run_id=run_id, metadata=meta, fmt=opts.fmt, trace=trace)


def _initial_metadata(
    chain: ChainGraph, opts: RunOptions, writer: RunWriter, run_id: str, started: float
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "run_id": run_id,
        "chain": chain.name,
        "status": "running",
        "started_at": _iso(started),
        "output_dir": str(writer.path),
        "executor": opts.executor,
        "versions": _versions(),
        # not asdict(): it deep-copies every field, and an event handler can hold a console or a lock
        "config": {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in _LISTENERS}
        | {"batch_size": chain.batch_size},
    }
    if writer.previous is not None:
        meta["resumed_from"] = {k: writer.previous.get(k) for k in ("run_id", "status", "started_at")}
    return meta


def _lay_out(chain: ChainGraph, writer: RunWriter, meta: dict[str, Any]) -> None:
    """``graph.json``, the first ``metadata.json``, ``failures.jsonl`` and the output folders."""
    try:
        writer.write_json("graph.json", _graph(chain))
        writer.write_json("metadata.json", scrub_strings(meta))
        (writer.path / "failures.jsonl").touch()
        writer.open_folder("flattened")
        for node in chain.iter_nodes():
            if node.write:
                writer.open_folder(node.id)
            if node.writes_to is not None:
                writer.open_file(node.id, node.writes_to)
    except OSError as exc:
        raise fs_error(exc, f"write the run folder {str(writer.path)!r}") from exc


async def _pipeline(
    chain: ChainGraph,
    inputs: Any,
    opts: RunOptions,
    ctx: RunContext,
    counts: dict[str, int],
    meta: dict[str, Any],
) -> None:
    """The source and one task group per stage, joined by bounded streams (records go through a
    stage one by one, ``runtime/stages.py``); the first real error (not the cancellations it
    caused) propagates."""
    limit = in_flight_limit(chain, opts)
    flows: list[Flow] = []
    try:
        # entering the broker runs its idle-eviction timer for the length of the run
        async with ctx.broker, anyio.create_task_group() as tg:
            send, receive = anyio.create_memory_object_stream[Chunk](opts.buffer)
            tg.start_soon(_source, chain, inputs, opts, ctx, send, counts)
            parts = stages(chain)
            for k, items in enumerate(parts):
                last = k == len(parts) - 1
                next_send, next_receive = (
                    (None, None) if last else anyio.create_memory_object_stream[Chunk](opts.buffer)
                )
                # a take or shuffle next means the first n, a seeded order: it gets the records in input order
                feeds_whole = not last and parts[k + 1][0].whole_stream
                # a streaming step (samples > 1) hands its samples on as they are made: not held for order
                ordered = (opts.ordered and not any(item.streams for item in items)) or feeds_whole
                flow = Flow(limit, ordered) if per_record(items) else None
                if flow is not None:
                    flows.append(flow)
                tg.start_soon(run_stage, items, ctx, receive, next_send, flow)
                if next_receive is not None:
                    receive = next_receive
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        meta["in_flight"] = {"limit": limit, "peak": max((f.peak for f in flows), default=0)}


IN_FLIGHT_STEPS = 4
"""The most engine steps the default ``max_in_flight`` scales with."""


def in_flight_limit(chain: ChainGraph, opts: RunOptions) -> int:
    """``opts.max_in_flight``, or the default: enough to keep every engine of the chain full.

    A record holds its slot through each of its requests in turn, so a chain of ``k`` steps that
    send requests needs ``k`` times the records of one step for as many requests to be ready:
    ``2 × the largest max_concurrency × k`` (``k`` at most ``IN_FLIGHT_STEPS``)."""
    if opts.max_in_flight is not None:
        return opts.max_in_flight
    largest = 0
    for name in chain.engine_names():
        stated = get_engine_config(name).options.get("max_concurrency")
        if isinstance(stated, int) and not isinstance(stated, bool):
            largest = max(largest, stated)
    steps = sum(1 for node in chain.iter_nodes() if node.engine_name is not None)
    deep = min(max(1, steps), IN_FLIGHT_STEPS)
    return max(256, chain.batch_size * max(1, opts.workers), 2 * largest * deep)


async def _finish(
    chain: ChainGraph,
    ctx: RunContext,
    writer: RunWriter,
    counts: dict[str, int],
    meta: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Release the engines, flush the writer and write the final ``metadata.json`` (returned)."""
    broker = ctx.broker
    await broker.aclose()
    write_error: RunFolderError | None = None
    try:
        await writer.close()
    except RunFolderError as exc:  # a write failed (the disk is full...): its message says what to do
        write_error = exc
    finished = time.time()
    replaced = {
        n: e["replaced_by_server"] for n, e in meta.get("engines", {}).items() if "replaced_by_server" in e
    }
    meta.update(_summary(ctx, counts, writer, broker))
    for name, info in replaced.items():  # the engine as it ran, and what it replaced
        meta["engines"].setdefault(name, {})["replaced_by_server"] = info
    meta["cache"] = cache_summary(ctx)
    meta["cost"] = cost_summary(chain, ctx)
    meta["finished_at"] = _iso(finished)
    meta["duration_s"] = round(finished - started, 3)
    ran_through = meta["status"] == "completed"
    if write_error is not None and ran_through:
        meta["status"], meta["error"] = "failed", f"{type(write_error).__name__}: {write_error}"
    meta = scrub_strings(meta)
    try:  # final: on a full disk, written in the space the writer held in reserve
        writer.write_json("metadata.json", meta, final=True)
    except OSError as exc:
        write_error = write_error or fs_error(exc, f"write the run folder {str(writer.path)!r}")
    ctx.on_event(
        "run_finished", {"status": meta["status"], "output_dir": str(writer.path), "counts": meta["counts"]}
    )
    if write_error is not None and ran_through:  # otherwise the error that stopped the run goes on
        raise write_error
    return meta


async def _source(
    chain: ChainGraph,
    inputs: Any,
    opts: RunOptions,
    ctx: RunContext,
    send: MemoryObjectSendStream[Chunk],
    counts: dict[str, int],
) -> None:
    async with send:
        async for records in read_records(chain, inputs, opts, ctx, counts):
            await send.send(records)


def _input_stoppers(chain: ChainGraph) -> set[str]:
    """The ``take`` nodes that may stop the input once satisfied: none before them holds records."""
    out: set[str] = set()
    for item in chain.items:
        if isinstance(item, Take):
            out.add(item.id)
        elif item.whole_stream:
            break
    return out


def _ignore_event(kind: str, data: dict[str, Any]) -> None:
    """The event handler of a run nobody listens to."""


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "chain"
