"""What node runners share during one run: the writer, the engine broker, counters, events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio

from .._errors import BudgetExceededError, RecordError
from ..engines.base import Engine
from ..engines.broker import EngineBroker
from ..engines.registry import get_engine_config
from ..engines.secrets import scrub_exception, scrub_strings, scrub_text
from ..ledger.keys import engine_identity
from .chunks import ChunkHandler
from .coalesce import Coalescer
from .events import EventHandler
from .records import Record, dump
from .requests import RequestCache

__all__ = [
    "ChunkHandler",
    "DeltaHandler",
    "EventHandler",
    "NodeStats",
    "RecordSink",
    "RunContext",
    "UsageSink",
]

NodeRun = Callable[[Any, list[Record], "RunContext"], Awaitable[list[Record]]]
"""A runner's ``run(node, chunk, ctx)``."""

NodeObserver = Callable[[Any, list[Record], "RunContext", NodeRun], Awaitable[list[Record]]]
"""``observer(node, chunk, ctx, run)`` runs ``run(node, chunk, ctx)`` and may watch it (a served
trace emits ``node_started`` / ``node_finished`` around every node, nested ones included)."""

DeltaHandler = Callable[[str, str, str, str, bool], None]
"""``handler(node_id, record_id, delta, text_so_far, final)``: a step's answer arriving, piece by
piece, then one empty ``final`` piece when the answer is complete."""


class UsageSink(Protocol):
    """Told each answer's tokens by the record's input position (a traced run's
    :class:`~chainette.runtime.record_trace.RecordTrace`)."""

    def add_usage(self, step_id: str, index: int, prompt: int, completion: int, *, sent: bool) -> None:
        """``sent``: the engine answered it; else it came from the ledger or an identical request."""


class RecordSink(Protocol):
    """Where runners put what records produce: the run folder (``io.writer.RunWriter``) in a batch
    run; in a served chain a per-trace sink that tells the trace's listeners and, when the service
    records, passes the rows on to its run folder."""

    def add(self, key: str, row: dict[str, Any]) -> None:
        """A node's output row (``key``: the node's folder)."""

    def add_failure(self, row: dict[str, Any]) -> None:
        """A row of ``failures.jsonl``."""

    def add_flattened(self, row: dict[str, Any]) -> None:
        """A record that reached the end of the chain, flattened."""

    def open_folder(self, key: str) -> None:
        """Make sure ``key``'s folder exists (a node whose folder the run did not lay out)."""

    async def maybe_flush(self) -> None:
        """Write buffered rows if enough have accumulated."""


@dataclass
class NodeStats:
    """Per-node counters, written to ``metadata.json``."""

    records_in: int = 0
    done: int = 0
    """Input records finished here: passed on, failed or filtered (what progress bars show)."""
    records_out: int = 0
    failed: int = 0
    filtered: int = 0
    requests: int = 0
    """Requests the engine answered: a reply, or an error after sending (a transport retry is
    not a new request; the HTTP engine counts those in ``http_requests``). Not counted: a request
    cancelled before its answer came back (an interrupted run: the server may still have
    received it), one answered without being sent (``Completion.attempts == 0``, e.g. after an
    authentication failure), and a batch whose engine call raised. This is ``cache.sent`` and
    what ``cost`` is computed from."""
    unsent: int = 0
    """Requests that failed without reaching a server (``Completion.attempts == 0``: connection
    refused, no such host, or an engine stopped after an authentication failure): ``cache.unsent``."""
    cache_hits: int = 0
    """Answers read from the ledger instead of sent."""
    deduped: int = 0
    """Answers shared with an identical request of the same run."""
    reasks: int = 0
    retries: int = 0
    """Engine errors (a raise, an error answer, a timeout) tried again under the node's policy."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    saved_prompt_tokens: int = 0
    """Tokens of answers that came from the ledger or a duplicate (not paid again)."""
    saved_completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class RunContext:
    writer: RecordSink
    broker: EngineBroker
    on_event: EventHandler
    cache: RequestCache = field(default_factory=lambda: RequestCache(None, "off"))
    stats: dict[str, NodeStats] = field(default_factory=dict)
    failed_origins: set[str] | None = None
    """Inside a branch group: origins of records that failed there (so a join does not re-report)."""
    group_failed: set[str] | None = None
    """Inside a branch group: ids already written to failures by any branch of the group."""
    outer_failed: tuple[set[str], ...] = ()
    """Inside nested groups: the ``failed_origins`` of the enclosing branches (told too)."""
    child_failures: dict[str, tuple[str, str]] | None = None
    """Inside a map's body: failed record id → (node, message), so the map knows which children
    failed; their rows in failures.jsonl carry ``_parent`` (the id of the record they came from)."""
    _limiters: dict[str, anyio.CapacityLimiter] = field(default_factory=dict)
    _identities: dict[str, dict[str, Any]] = field(default_factory=dict)
    _coalescers: dict[str, Coalescer] = field(default_factory=dict)
    threaded: set[str] = field(default_factory=set)
    """Sync ``apply`` nodes found too slow for the event loop: they run on worker threads."""
    slow_once: set[str] = field(default_factory=set)
    """Sync ``apply`` nodes whose last chunk was slow, but not by their own work: one more moves them."""
    cheap: set[str] = field(default_factory=set)
    """Sync ``apply`` nodes whose last chunk, timed on its own, was under budget: consecutive ones
    run in one pass per record (``apply_fused.run_fused``)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Per-node state that lives as long as the run (whole-stream nodes: ``take``, ``shuffle``)."""
    input_stop: list[bool] = field(default_factory=lambda: [False])
    """``[True]``: read no more input (a ``take`` at the head of the chain has what it needs)."""
    observe_nodes: NodeObserver | None = None
    """Set (a served trace, or a batch run with ``record_trace=True``): every node runs through it
    (see :data:`NodeObserver`)."""
    on_delta: DeltaHandler | None = None
    """Set (a served trace that streams tokens): steps send one request at a time through
    ``Engine.stream`` where the engine streams, and report each piece of the answer here."""
    on_chunk: ChunkHandler | None = None
    """Set (a served trace): ``emit_chunk`` inside an ``apply`` reports pieces here
    (``runtime/chunks.py``); None in a batch run, where ``emit_chunk`` does nothing."""
    usage: UsageSink | None = None
    """Set (a traced batch run, ``record_trace=True``): told every answer's tokens per record."""
    record_deadline_s: float | None = None
    """The run's ``record_deadline_s`` (what a deadline failure's message says), None if unset."""

    def node(self, node_id: str) -> NodeStats:
        stats = self.stats.get(node_id)
        if stats is None:
            stats = self.stats[node_id] = NodeStats()
        return stats

    def wants(self, kind: str) -> bool:
        """Whether a listener asked for the per-record ``kind`` (``events.PER_RECORD``): the
        runtime builds none of those events otherwise."""
        return kind in getattr(self.on_event, "wanted", ())

    def tell(self, kind: str, record: Record, node_id: str, **data: Any) -> None:
        """Emit ``kind`` about ``record`` at ``node_id`` (its id and input position added)."""
        self.on_event(kind, {"node": node_id, "record": record.id, "index": record.index, **data})

    def for_branch(self, group_failed: set[str]) -> RunContext:
        """A view for one branch of a group: same writer, broker and counters, own failure set.

        ``group_failed`` is shared by the group's branches: a record that fails in two branches
        is written to failures.jsonl once (the first failure), so it is never there twice.
        """
        outer = (
            self.outer_failed if self.failed_origins is None else (*self.outer_failed, self.failed_origins)
        )
        return replace(self, failed_origins=set(), group_failed=group_failed, outer_failed=outer)

    def for_map_body(self) -> RunContext:
        """A view for a map's children: same writer, broker and counters; failures are collected
        in :attr:`child_failures`. The body is a world of its own: enclosing branch groups see
        only what the map does with the parent record."""
        return replace(self, failed_origins=None, group_failed=None, outer_failed=(), child_failures={})

    def identity(self, engine_name: str) -> dict[str, Any]:
        """What identifies the answers of engine ``engine_name`` in ledger keys (no engine started)."""
        identity = self._identities.get(engine_name)
        if identity is None:
            identity = self._identities[engine_name] = engine_identity(get_engine_config(engine_name))
        return identity

    async def engine(self, name: str) -> tuple[Engine, anyio.CapacityLimiter]:
        """The started engine and the limiter that caps calls in flight to it (shared by all steps)."""
        engine = await self.broker.get(name)
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters[name] = anyio.CapacityLimiter(max(1, engine.max_concurrency))
        return engine, limiter

    def coalescer(self, name: str, engine: Engine) -> Coalescer:
        """What gathers the requests to engine ``name`` into calls (``runtime/coalesce.py``),
        under the same limiter as :meth:`engine`'s."""
        coalescer = self._coalescers.get(name)
        if coalescer is None:  # one per engine name: a handle restarts an evicted engine itself
            coalescer = self._coalescers[name] = Coalescer(engine, self._limiters[name], self.broker.spawn)
        return coalescer

    def fail(self, record: Record, error: RecordError, *, emitted: bool = False) -> None:
        """Write ``record`` to failures.jsonl with the reason; it goes no further unless ``emitted``.

        The error's message, raw text and details are scrubbed of credentials first (in place, so
        what is remembered in the ledger or raised later is scrubbed too).
        """
        scrub_exception(error)
        error.raw = scrub_text(error.raw) if error.raw else error.raw
        error.details = scrub_strings(error.details)
        stats = self.node(error.node_id)
        stats.failed += 1
        stats.done += 1
        if self.child_failures is not None and not emitted:
            self.child_failures.setdefault(record.id, (error.node_id, error.message))
        if self.failed_origins is not None and record.origin is not None and not emitted:
            self.failed_origins.add(record.origin)
            for outer in self.outer_failed:
                outer.add(record.origin)
            if self.group_failed is not None:
                if record.id in self.group_failed:
                    return  # already in failures.jsonl from a sibling branch (counted above for this node)
                self.group_failed.add(record.id)
        row = {
            "_id": record.id,
            "_index": record.index,
            **self._parent_of(record),
            **(record.tags or {}),  # inside a loop: the pass it failed in (``<loop>.iteration``)
            "node": error.node_id,
            "error_type": error.kind,
            "message": error.message,
            "attempts": error.attempts,
            "raw": error.raw,
            "input": dump(record.value),
        }
        if error.details:
            row["details"] = error.details
        if emitted:
            row["emitted"] = True
        self.writer.add_failure(row)
        if isinstance(error, BudgetExceededError):
            self.tell("budget_exceeded", record, error.node_id, limit=(error.details or {}).get("limit"))
        told = {"node": error.node_id, "record": record.id, "message": error.message}
        self.on_event("record_failed", {**told, "emitted": True} if emitted else told)

    def _parent_of(self, record: Record) -> dict[str, str]:
        """``{"_parent": id}`` for a map's child (``<parent id>/<k>``, or a fan-out of it), else nothing."""
        return {} if self.child_failures is None else {"_parent": record.id.rsplit("/", 1)[0]}

    def progress(self, node_id: str, detail: str | None = None) -> None:
        """Tell listeners how far ``node_id`` is (``node_progress``: ``done``, ``failed``,
        ``cached``, ``in``: records that entered it, ``filtered``, and for a step the tokens sent);
        ``detail`` is shown beside its count (a map's items)."""
        stats = self.node(node_id)
        data: dict[str, Any] = {
            "node": node_id,
            "done": stats.done,
            "failed": stats.failed,
            "cached": stats.cache_hits + stats.deduped,
            "in": stats.records_in,
            "filtered": stats.filtered,
        }
        if stats.prompt_tokens or stats.completion_tokens:  # tokens sent (what is paid)
            data["prompt_tokens"], data["completion_tokens"] = stats.prompt_tokens, stats.completion_tokens
        if detail is not None:
            data["detail"] = detail
        self.on_event("node_progress", data)
